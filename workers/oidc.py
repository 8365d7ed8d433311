"""Verify OIDC access tokens (JWTs) against the issuer's published keys.

The codec server uses it for the token the Temporal UI forwards for its signed-in user. A token
counts only if its signature verifies with a key from the issuer's JWKS (fetched over HTTP from
the discovery document or a configured URL, cached, refetched when a token names an unknown key
id), and its issuer, audience and expiry are the expected ones.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

__all__ = ["ASYMMETRIC_ALGORITHMS", "OidcVerifier", "TokenRefused", "VerifiedToken"]

# Public-key algorithms only: a shared-secret (HS*) or unsigned ("none") token proves nothing here.
ASYMMETRIC_ALGORITHMS = [
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
]
# Clock skew tolerated on exp/nbf/iat.
LEEWAY_SECONDS = 30


class TokenRefused(Exception):
    """A token was not accepted. `status` is the HTTP status to answer (401: not authenticated,
    403: authenticated but not allowed, 503: the issuer's keys cannot be fetched); the message
    says why, without the token."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class VerifiedToken:
    subject: str
    issuer: str
    claims: Mapping[str, Any]


class OidcVerifier:
    """Verifies access tokens of one issuer for one audience.

    `required_group`: the token's `groups_claim` (a list, or a space-separated string) must
    contain it. Keys are kept `max_age_seconds`; a token naming an unknown key id refetches
    them, at most once per `refresh_cooldown_seconds` (random key ids must not turn every
    request into a request to the issuer).
    """

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        jwks_url: str | None = None,
        required_group: str | None = None,
        groups_claim: str = "groups",
        max_age_seconds: float = 3600,
        refresh_cooldown_seconds: float = 30,
        timeout_seconds: float = 5,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.jwks_url = jwks_url
        self.required_group = required_group
        self.groups_claim = groups_claim
        self.max_age_seconds = max_age_seconds
        self.refresh_cooldown_seconds = refresh_cooldown_seconds
        self.timeout_seconds = timeout_seconds
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._failure: TokenRefused | None = None
        self._lock = asyncio.Lock()

    async def verify(self, token: str) -> VerifiedToken:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise TokenRefused(401, "the bearer token is not a JWT") from None
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenRefused(401, "the token names no key id (kid)")
        key = await self._key(kid)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=ASYMMETRIC_ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRefused(401, "the token has expired") from None
        except jwt.InvalidAudienceError:
            raise TokenRefused(401, f"the token's audience is not {self.audience!r}") from None
        except jwt.InvalidIssuerError:
            raise TokenRefused(401, f"the token's issuer is not {self.issuer!r}") from None
        except jwt.InvalidSignatureError:
            raise TokenRefused(
                401, f"the token's signature does not verify with the issuer's key {kid!r}"
            ) from None
        except jwt.InvalidAlgorithmError as e:
            raise TokenRefused(401, f"the token's algorithm is not accepted: {e}") from None
        except jwt.MissingRequiredClaimError as e:
            raise TokenRefused(401, f"the token lacks the {e.claim!r} claim") from None
        except jwt.PyJWTError as e:  # not yet valid, malformed claims
            raise TokenRefused(401, f"the token is not valid: {e}") from None
        subject = claims["sub"]
        if self.required_group is not None and self.required_group not in self._groups(claims):
            raise TokenRefused(
                403,
                f"subject {subject!r} is not in group {self.required_group!r} "
                f"(claim {self.groups_claim!r})",
            )
        return VerifiedToken(subject=subject, issuer=claims["iss"], claims=claims)

    def _groups(self, claims: Mapping[str, Any]) -> list[str]:
        value = claims.get(self.groups_claim)
        if isinstance(value, str):
            return value.split()
        if isinstance(value, list):
            return [g for g in value if isinstance(g, str)]
        return []

    async def _key(self, kid: str) -> jwt.PyJWK:
        async with self._lock:
            now = time.monotonic()
            fresh = self._fetched_at is not None and now - self._fetched_at <= self.max_age_seconds
            # One attempt per cooldown, failed ones included: an unreachable issuer answers
            # 503 at once instead of making every request wait for a timeout.
            may_fetch = (
                self._attempted_at is None
                or now - self._attempted_at > self.refresh_cooldown_seconds
            )
            if (not fresh or kid not in self._keys) and may_fetch:
                self._attempted_at = now
                try:
                    self._keys = await self._fetch_keys()
                    self._fetched_at = time.monotonic()
                    self._failure = None
                except TokenRefused as e:
                    self._failure = e
            fresh = self._fetched_at is not None and now - self._fetched_at <= self.max_age_seconds
            key = self._keys.get(kid)
        if not fresh:
            raise self._failure or TokenRefused(503, f"no signing keys of issuer {self.issuer!r}")
        if key is None:  # a failed refresh could not rule out a new key: say so, not "unknown"
            raise self._failure or TokenRefused(401, f"the issuer publishes no key with id {kid!r}")
        return key

    async def _fetch_keys(self) -> dict[str, jwt.PyJWK]:
        """Key id -> key, of the issuer's signing keys."""
        try:
            async with httpx.AsyncClient(timeout=self.timeout_seconds) as http:
                jwks_url = self.jwks_url or await self._discover_jwks_url(http)
                r = await http.get(jwks_url)
                r.raise_for_status()
                body = r.json()
                if not isinstance(body, dict):
                    raise ValueError(f"{jwks_url} is not a JWK set")
                jwks = jwt.PyJWKSet.from_dict(body)
        except (httpx.HTTPError, ValueError, jwt.PyJWTError) as e:
            raise TokenRefused(
                503, f"cannot fetch the signing keys of issuer {self.issuer!r}: {e}"
            ) from None
        return {
            k.key_id: k
            for k in jwks.keys
            if k.key_id
            and k.public_key_use in (None, "sig")
            # a symmetric (oct) key in a JWKS must never verify anything here
            and k.algorithm_name in ASYMMETRIC_ALGORITHMS
        }

    async def _discover_jwks_url(self, http: httpx.AsyncClient) -> str:
        url = f"{self.issuer.rstrip('/')}/.well-known/openid-configuration"
        r = await http.get(url)
        r.raise_for_status()
        doc = r.json()
        if not isinstance(doc, dict):
            raise ValueError(f"{url} is not a discovery document")
        # OIDC Discovery 1.0 §4.3: the document must name exactly the issuer we trust.
        if doc.get("issuer") != self.issuer:
            raise ValueError(f"{url} names issuer {doc.get('issuer')!r}, not {self.issuer!r}")
        jwks_uri = doc.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri:
            raise ValueError(f"{url} has no jwks_uri")
        return jwks_uri
