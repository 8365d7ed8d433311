"""The codec server decodes for people whose access token verifies against the OIDC issuer (and
for the service token), only for the Temporal UI's origin; it refuses everyone else with a
reason, and logs every decode with the verified subject, never the token or the contents.

A small OIDC issuer runs in the test on loopback (discovery document, JWKS, signing keys); the
codec server runs as its own process, as in a deployment."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from temporalio.api.common.v1 import Payload

from countersign.activities.payload_keys import load_payload_keys
from countersign.credentials import ensure_secret
from countersign.settings import Settings, SettingsError
from countersign.workers.codec import EncryptionCodec
from countersign.workers.codec_server import capability_endpoint, oidc_verifier
from countersign.workers.devstack import Service, free_port, start_codec_server
from countersign.workers.oidc import OidcVerifier, TokenRefused

UI = "http://127.0.0.1:8233"
SECRET_TEXT = b'{"email": "grace@example.com", "amount_cents": 18900}'
AUDIENCE = "countersign-codec"
GROUP = "payload-readers"

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass
class Issuer:
    """An OIDC issuer on loopback: publishes the public half of `published` keys, signs tokens
    with any key it holds, and counts how often its keys were fetched."""

    url: str
    keys: dict[str, SigningKey] = field(default_factory=dict)
    published: list[str] = field(default_factory=list)
    fetches: dict[str, int] = field(
        default_factory=lambda: {"discovery": 0, "jwks": 0, "missing": 0}
    )

    def add_key(self, kid: str, key: SigningKey, *, publish: bool = True) -> None:
        self.keys[kid] = key
        if publish:
            self.published.append(kid)

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid in self.published:
            key = self.keys[kid]
            if isinstance(key, rsa.RSAPrivateKey):
                jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
                jwk["alg"] = "RS256"
            else:
                jwk = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
                jwk["alg"] = "ES256"
            keys.append({**jwk, "kid": kid, "use": "sig"})
        return {"keys": keys}

    def token(self, kid: str = "rsa-1", *, signed_by: str | None = None, **claims: Any) -> str:
        """A token for alice in the group, valid for 5 minutes; `claims` override (None drops a
        claim); `signed_by`: sign with another key than `kid` names."""
        now = int(time.time())
        body = {
            "iss": self.url,
            "aud": AUDIENCE,
            "sub": "alice@example.com",
            "groups": ["finance", GROUP],
            "iat": now,
            "exp": now + 300,
            **claims,
        }
        body = {k: v for k, v in body.items() if v is not None}
        key = self.keys[signed_by or kid]
        alg = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
        return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    port = free_port()
    issuer = Issuer(url=f"http://127.0.0.1:{port}")
    issuer.add_key("rsa-1", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    issuer.add_key("ec-1", ec.generate_private_key(ec.SECP256R1()))

    async def discovery(request: Request) -> JSONResponse:
        issuer.fetches["discovery"] += 1
        return JSONResponse({"issuer": issuer.url, "jwks_uri": f"{issuer.url}/keys"})

    async def keys(request: Request) -> JSONResponse:
        issuer.fetches["jwks"] += 1
        return JSONResponse(issuer.jwks())

    async def missing(request: Request) -> JSONResponse:
        issuer.fetches["missing"] += 1
        return JSONResponse({"error": "down for maintenance"}, status_code=500)

    app = Starlette(
        routes=[
            Route("/.well-known/openid-configuration", discovery),
            Route("/keys", keys),
            Route("/no-such-keys", missing),
        ]
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the test issuer did not start"
    yield issuer
    server.should_exit = True
    thread.join(5)


def codec_settings(settings: Settings, **update: object) -> Settings:
    return settings.model_copy(
        update={"codec_url": f"http://127.0.0.1:{free_port()}", "temporal_ui_url": UI + "/"}
        | update
    )


@pytest.fixture(scope="module")
def codec(settings: Settings, issuer: Issuer) -> Iterator[tuple[Settings, Service]]:
    """A production-like codec server: people through the issuer (discovery), in GROUP."""
    conf = codec_settings(
        settings,
        codec_oidc_issuer=issuer.url,
        codec_oidc_audience=AUDIENCE,
        codec_oidc_required_group=GROUP,
    )
    ensure_secret(conf.codec_token_credential)
    service = start_codec_server(settings.state_dir, conf)
    yield conf, service
    service.stop()


def as_json(payload: Payload) -> dict[str, object]:
    return {
        "payloads": [
            {
                "metadata": {k: base64.b64encode(v).decode() for k, v in payload.metadata.items()},
                "data": base64.b64encode(payload.data).decode(),
            }
        ]
    }


def sealed(settings: Settings) -> dict[str, object]:
    plain = Payload(metadata={"encoding": b"json/plain"}, data=SECRET_TEXT)
    return as_json(EncryptionCodec(load_payload_keys(settings)).encrypt(plain))


def log_lines(service: Service, event: str, namespace: str) -> list[dict[str, Any]]:
    lines = [
        json.loads(line) for line in service.log_path.read_text().splitlines() if event in line
    ]
    return [
        line for line in lines if line.get("event") == event and line.get("namespace") == namespace
    ]


def test_decodes_for_a_signed_in_user_the_ui_forwards(
    codec: tuple[Settings, Service], issuer: Issuer, settings: Settings
) -> None:
    conf, service = codec
    decode = f"{conf.codec_url}/codec/decode"
    namespace = f"ns-{uuid.uuid4().hex[:6]}"
    tokens = [issuer.token("rsa-1"), issuer.token("ec-1", sub="bob@example.com")]
    with httpx.Client(timeout=10) as http:
        # The UI's preflight: with "pass access token" it also sends the ID token.
        pre = http.options(
            decode,
            headers={
                "Origin": UI,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": (
                    "authorization,authorization-extras,content-type,x-namespace"
                ),
            },
        )
        assert pre.status_code == 204
        assert pre.headers["access-control-allow-origin"] == UI
        allowed = pre.headers["access-control-allow-headers"].lower()
        for header in ("authorization", "authorization-extras", "content-type", "x-namespace"):
            assert header in allowed
        before = dict(issuer.fetches)
        for token in tokens * 2:
            r = http.post(
                decode + "?preserveStorageRefs=true",  # as the UI calls it
                json=sealed(settings),
                headers={
                    "Origin": UI,
                    "X-Namespace": namespace,
                    "Authorization": f"Bearer {token}",
                    "Authorization-Extras": "an-id-token",
                },
            )
            assert r.status_code == 200, r.text
            assert r.headers["access-control-allow-origin"] == UI
            assert base64.b64decode(r.json()["payloads"][0]["data"]) == SECRET_TEXT
    # The issuer's keys were fetched at most once for four decodes (then cached).
    assert issuer.fetches["jwks"] - before["jwks"] <= 1

    decodes = log_lines(service, "codec.decode", namespace)
    assert [(d["subject"], d["via"], d["issuer"]) for d in decodes] == [
        ("alice@example.com", "oidc", issuer.url),
        ("bob@example.com", "oidc", issuer.url),
    ] * 2
    log = service.log_path.read_text()
    assert "grace@example.com" not in log and "18900" not in log
    assert not any(token in log for token in tokens)


def test_the_service_token_still_serves_machine_clients(
    codec: tuple[Settings, Service], settings: Settings
) -> None:
    """The Temporal CLI (`--codec-auth "Bearer TOKEN"`) sends no Origin."""
    conf, service = codec
    token = ensure_secret(conf.codec_token_credential)
    namespace = f"ns-{uuid.uuid4().hex[:6]}"
    with httpx.Client(timeout=10) as http:
        auth = {"Authorization": f"Bearer {token}", "X-Namespace": namespace}
        r = http.post(f"{conf.codec_url}/codec/decode", json=sealed(settings), headers=auth)
        assert r.status_code == 200, r.text
        assert base64.b64decode(r.json()["payloads"][0]["data"]) == SECRET_TEXT
        r = http.post(
            f"{conf.codec_url}/codec/encode",
            json={"payloads": [{"data": base64.b64encode(b"hi").decode()}]},
            headers=auth,
        )
        assert r.status_code == 200
        encoding = r.json()["payloads"][0]["metadata"]["encoding"]
        assert base64.b64decode(encoding) == b"binary/encrypted"
    [decode] = log_lines(service, "codec.decode", namespace)
    assert (decode["subject"], decode["via"]) == ("service-token", "service-token")
    assert token not in service.log_path.read_text()


def test_refuses_every_token_that_does_not_prove_a_reader(
    codec: tuple[Settings, Service], issuer: Issuer, settings: Settings
) -> None:
    conf, service = codec
    issuer.add_key("stranger", rsa.generate_private_key(65537, 2048), publish=False)
    namespace = f"ns-{uuid.uuid4().hex[:6]}"
    cases: list[tuple[str, dict[str, str], int, str]] = [
        ("no token", {}, 401, "send Authorization: Bearer"),
        ("not bearer", {"Authorization": f"Basic {issuer.token()}"}, 401, "Bearer"),
        ("wrong opaque token", {"Authorization": "Bearer wrong"}, 401, "not the codec service"),
        ("garbage JWT", {"Authorization": "Bearer a.b.c"}, 401, "not a JWT"),
        (
            "expired",
            {"Authorization": f"Bearer {issuer.token(exp=int(time.time()) - 600)}"},
            401,
            "expired",
        ),
        (
            "wrong audience",
            {"Authorization": f"Bearer {issuer.token(aud='another-app')}"},
            401,
            "audience",
        ),
        (
            "wrong issuer",
            {"Authorization": f"Bearer {issuer.token(iss='http://evil.example')}"},
            401,
            "issuer",
        ),
        (
            "signed by another key",
            {"Authorization": f"Bearer {issuer.token('rsa-1', signed_by='stranger')}"},
            401,
            "signature does not verify",
        ),
        (
            "unknown kid",
            {"Authorization": f"Bearer {issuer.token('stranger')}"},
            401,
            "no key with id 'stranger'",
        ),
        ("no expiry", {"Authorization": f"Bearer {issuer.token(exp=None)}"}, 401, "'exp'"),
        (
            "not in the group",
            {"Authorization": f"Bearer {issuer.token(groups=['finance'])}"},
            403,
            f"not in group '{GROUP}'",
        ),
        (
            "no groups claim",
            {"Authorization": f"Bearer {issuer.token(groups=None)}"},
            403,
            f"not in group '{GROUP}'",
        ),
    ]
    with httpx.Client(timeout=10) as http:
        for name, auth, status, reason in cases:
            r = http.post(
                f"{conf.codec_url}/codec/decode",
                json=sealed(settings),
                headers={"Origin": UI, "X-Namespace": namespace, **auth},
            )
            assert r.status_code == status, (name, r.text)
            assert reason in r.text, (name, r.text)
            assert "grace" not in r.text
            # The UI can read the refusal (so it can say why), never the payload.
            assert r.headers["access-control-allow-origin"] == UI
            if status == 401:
                assert r.headers["www-authenticate"].startswith("Bearer")
        # Not in dev mode: the capability URL is refused even with the right token.
        token = ensure_secret(conf.codec_token_credential)
        r = http.post(
            capability_endpoint(conf, token) + "/decode",
            json=sealed(settings),
            headers={"Origin": UI, "X-Namespace": namespace},
        )
        assert r.status_code == 403
        assert "capability URLs are off" in r.text and "grace" not in r.text
    assert log_lines(service, "codec.decode", namespace) == []
    refused = log_lines(service, "codec.refused", namespace)
    assert len(refused) == len(cases) + 1
    assert token not in service.log_path.read_text()


def test_refuses_other_origins_even_with_a_valid_token(
    codec: tuple[Settings, Service], issuer: Issuer, settings: Settings
) -> None:
    conf, service = codec
    decode = f"{conf.codec_url}/codec/decode"
    with httpx.Client(timeout=10) as http:
        for origin in ("http://evil.example", "http://localhost:8233", "https://127.0.0.1:8233"):
            pre = http.options(
                decode, headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
            )
            assert pre.status_code == 403
            assert "access-control-allow-origin" not in pre.headers
            r = http.post(
                decode,
                json=sealed(settings),
                headers={"Origin": origin, "Authorization": f"Bearer {issuer.token()}"},
            )
            assert r.status_code == 403, origin
            assert "grace" not in r.text
        token = ensure_secret(conf.codec_token_credential)
        r = http.post(decode, content=b"not json", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 400
    log = service.log_path.read_text()
    assert "codec.refused" in log and "evil.example" in log


def test_capability_url_works_only_in_dev_mode_and_says_so_loudly(settings: Settings) -> None:
    """`countersign dev` turns it on for its UI without login; people's tokens are then not
    accepted unless an issuer is configured."""
    conf = codec_settings(settings, codec_capability_url=True)
    token = ensure_secret(conf.codec_token_credential)
    # Codec servers of this session share one log file: read only what this one wrote.
    log_file = settings.state_dir / "logs" / "codec-server.log"
    offset = log_file.stat().st_size if log_file.exists() else 0
    service = start_codec_server(settings.state_dir, conf)
    namespace = f"ns-{uuid.uuid4().hex[:6]}"
    try:
        with httpx.Client(timeout=10) as http:
            r = http.post(
                capability_endpoint(conf, token) + "/decode",
                json=sealed(settings),
                headers={"Origin": UI, "X-Namespace": namespace},
            )
            assert r.status_code == 200, r.text
            assert base64.b64decode(r.json()["payloads"][0]["data"]) == SECRET_TEXT
            r = http.post(capability_endpoint(conf, "wrong") + "/decode", json=sealed(settings))
            assert r.status_code == 401
            some_jwt = jwt.encode({"sub": "x"}, ec.generate_private_key(ec.SECP256R1()), "ES256")
            r = http.post(
                f"{conf.codec_url}/codec/decode",
                json=sealed(settings),
                headers={"Authorization": f"Bearer {some_jwt}"},
            )
            assert r.status_code == 401 and "COUNTERSIGN_CODEC_OIDC_ISSUER" in r.text
    finally:
        service.stop()
    [decode] = log_lines(service, "codec.decode", namespace)
    assert (decode["subject"], decode["via"]) == ("capability-url", "capability-url")
    log = service.log_path.read_bytes()[offset:].decode()
    [on] = [json.loads(line) for line in log.splitlines() if "codec.capability_url_on" in line]
    assert on["level"] == "warning" and "DEVELOPMENT ONLY" in on["warning"]
    assert token not in log


async def test_a_rotated_key_is_fetched_once_and_random_key_ids_do_not_flood_the_issuer(
    issuer: Issuer,
) -> None:
    """The JWKS URL can be configured instead of discovered."""
    verifier = OidcVerifier(
        issuer.url, AUDIENCE, jwks_url=f"{issuer.url}/keys", refresh_cooldown_seconds=0.5
    )
    before = dict(issuer.fetches)
    assert (await verifier.verify(issuer.token("rsa-1"))).subject == "alice@example.com"
    assert (await verifier.verify(issuer.token("ec-1"))).subject == "alice@example.com"
    assert issuer.fetches["discovery"] == before["discovery"]
    assert issuer.fetches["jwks"] == before["jwks"] + 1

    # The issuer rotates in a new key: the first token naming it refetches the keys.
    kid = f"rsa-{uuid.uuid4().hex[:6]}"
    issuer.add_key(kid, rsa.generate_private_key(65537, 2048))
    await asyncio.sleep(0.6)  # past the cooldown
    assert (await verifier.verify(issuer.token(kid, sub="carol"))).subject == "carol"
    assert issuer.fetches["jwks"] == before["jwks"] + 2

    # A burst of unknown key ids right after: each refused, and no fetch within the cooldown.
    for _ in range(5):
        forged = issuer.token(f"kid-{uuid.uuid4().hex[:6]}", signed_by="rsa-1")
        with pytest.raises(TokenRefused, match="publishes no key with id") as refused:
            await verifier.verify(forged)
        assert refused.value.status == 401
    assert issuer.fetches["jwks"] == before["jwks"] + 2


def test_an_issuer_needs_an_audience_and_empty_settings_mean_unset(settings: Settings) -> None:
    # docker compose passes unset variables as empty strings.
    empty = settings.model_copy(
        update={"codec_oidc_issuer": "", "codec_oidc_audience": "", "codec_oidc_jwks_url": ""}
    )
    assert oidc_verifier(empty) is None
    partial = settings.model_copy(
        update={"codec_oidc_issuer": "https://idp.example", "codec_oidc_required_group": ""}
    )
    with pytest.raises(SettingsError, match="COUNTERSIGN_CODEC_OIDC_AUDIENCE"):
        oidc_verifier(partial)
    verifier = oidc_verifier(partial.model_copy(update={"codec_oidc_audience": AUDIENCE}))
    assert verifier is not None and verifier.required_group is None


async def test_an_unreachable_issuer_is_a_quick_503_not_a_wait_per_request(
    issuer: Issuer,
) -> None:
    verifier = OidcVerifier(
        issuer.url, AUDIENCE, jwks_url=f"{issuer.url}/no-such-keys", refresh_cooldown_seconds=60
    )
    before = issuer.fetches["missing"]
    for _ in range(3):
        with pytest.raises(TokenRefused, match="cannot fetch the signing keys") as refused:
            await verifier.verify(issuer.token())
        assert refused.value.status == 503
    # One attempt per cooldown, not one per request.
    assert issuer.fetches["missing"] == before + 1
