"""The codec server: lets authorized people read encrypted payloads in the Temporal UI.

It speaks Temporal's remote codec protocol (`POST …/encode`, `POST …/decode`, body and answer
`{"payloads": [...]}` in protobuf JSON). Browsers are served only from the configured Temporal
UI origin (exact match; every other origin is refused, preflight included). Each request
proves who sends it with `Authorization: Bearer …`, one of:

- a person's OIDC access token, which the Temporal UI forwards for its signed-in user (codec
  setting "pass access token"), verified against the configured issuer (workers/oidc.py);
- the service token from the keyring (the Temporal CLI's `--codec-auth`, scripts);
- development only, when `codec_capability_url` is on (`countersign dev`): the service token
  in the URL, `…/codec/k/TOKEN`, for a UI without login.

Every decode is logged with the verified subject (and origin, namespace, how many payloads),
never the token or payload contents.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import structlog
import uvicorn
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from temporalio.api.common.v1 import Payloads
from temporalio.converter import PayloadCodec

from countersign.settings import Settings, SettingsError
from countersign.workers.oidc import OidcVerifier, TokenRefused

log = structlog.get_logger(__name__)

# The Temporal UI sends X-Namespace always, and with "pass access token" Authorization (the
# access token) and Authorization-Extras (the ID token); a preflight refusing one blocks all.
ALLOWED_HEADERS = "Content-Type, X-Namespace, Authorization, Authorization-Extras"


@dataclass(frozen=True)
class Caller:
    """Who a request was verified as: `via` names the credential, `subject` who holds it."""

    via: str  # "oidc", "service-token" or "capability-url"
    subject: str
    issuer: str | None = None


def origin_of(url: str) -> str:
    """`scheme://host[:port]` of a URL, as browsers send it in the Origin header."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def capability_endpoint(settings: Settings, token: str) -> str:
    """The development codec endpoint for a UI without login (it appends /encode, /decode)."""
    return f"{settings.codec_url.rstrip('/')}/codec/k/{token}"


def codec_app(
    codec: PayloadCodec,
    token: str,
    ui_origin: str,
    *,
    oidc: OidcVerifier | None = None,
    capability_url: bool = False,
) -> Starlette:
    """`token`: the service token. `oidc`: verifies people's access tokens (None: only the
    service token is accepted). `capability_url`: accept the token in the URL (development)."""

    def cors(origin: str | None) -> dict[str, str]:
        if origin != ui_origin:
            return {}
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": ALLOWED_HEADERS,
            "Access-Control-Max-Age": "600",
            "Vary": "Origin",
        }

    def refuse(request: Request, direction: str, status: int, reason: str) -> Response:
        log.warning(
            "codec.refused",
            status=status,
            reason=reason,
            direction=direction,
            origin=request.headers.get("origin"),
            namespace=request.headers.get("x-namespace"),
            client=request.client.host if request.client else None,
        )
        headers = cors(request.headers.get("origin"))
        if status == 401:
            headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        return PlainTextResponse(reason, status, headers=headers)

    def is_service_token(given: str) -> bool:
        return hmac.compare_digest(given.encode(), token.encode())

    async def authenticate(request: Request) -> Caller:
        """The verified caller; TokenRefused says why not."""
        in_url = request.path_params.get("token")
        if in_url is not None:
            if not capability_url:
                raise TokenRefused(
                    403,
                    "capability URLs are off (a development convenience, on in `countersign "
                    "dev` or with COUNTERSIGN_CODEC_CAPABILITY_URL=true); send Authorization: "
                    "Bearer with your access token or the service token",
                )
            if is_service_token(in_url):
                return Caller("capability-url", "capability-url")
            raise TokenRefused(401, "the token in the URL is not the codec service token")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            raise TokenRefused(
                401, "send Authorization: Bearer with your access token or the service token"
            )
        if is_service_token(given):
            return Caller("service-token", "service-token")
        if given.count(".") != 2:  # not a JWT, so it could only have been the service token
            raise TokenRefused(401, "the bearer token is not the codec service token")
        if oidc is None:
            raise TokenRefused(
                401, "user access tokens are not accepted: COUNTERSIGN_CODEC_OIDC_ISSUER is not set"
            )
        verified = await oidc.verify(given)
        return Caller("oidc", verified.subject, verified.issuer)

    def endpoint(
        direction: str, convert: Callable[[Payloads], Awaitable[Payloads]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            origin = request.headers.get("origin")
            if origin is not None and origin != ui_origin:
                return refuse(request, direction, 403, f"origin {origin} is not allowed")
            if request.method == "OPTIONS":
                return Response(status_code=204, headers=cors(origin))
            try:
                caller = await authenticate(request)
            except TokenRefused as e:
                return refuse(request, direction, e.status, e.reason)
            try:
                payloads = json_format.Parse(await request.body(), Payloads())
            except json_format.ParseError:
                return refuse(
                    request, direction, 400, 'body must be {"payloads": [...]} (protobuf JSON)'
                )
            try:
                converted = await convert(payloads)
            except Exception as e:  # an unknown key or altered ciphertext: say so, keep serving
                return refuse(request, direction, 422, f"cannot {direction}: {e}")
            log.info(
                f"codec.{direction}",
                subject=caller.subject,
                via=caller.via,
                issuer=caller.issuer,
                namespace=request.headers.get("x-namespace"),
                payloads=len(payloads.payloads),
                origin=origin,
                client=request.client.host if request.client else None,
            )
            return JSONResponse(json_format.MessageToDict(converted), headers=cors(origin))

        return handle

    async def encode(p: Payloads) -> Payloads:
        return Payloads(payloads=await codec.encode(p.payloads))

    async def decode(p: Payloads) -> Payloads:
        return Payloads(payloads=await codec.decode(p.payloads))

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    methods = ["POST", "OPTIONS"]
    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/codec/encode", endpoint("encode", encode), methods=methods),
            Route("/codec/decode", endpoint("decode", decode), methods=methods),
            Route("/codec/k/{token}/encode", endpoint("encode", encode), methods=methods),
            Route("/codec/k/{token}/decode", endpoint("decode", decode), methods=methods),
        ]
    )


def oidc_verifier(settings: Settings) -> OidcVerifier | None:
    """The verifier for people's access tokens, or None when no issuer is configured."""
    if not settings.codec_oidc_issuer:
        return None
    if not settings.codec_oidc_audience:  # a token for another app must not open payloads
        raise SettingsError(
            "invalid settings: COUNTERSIGN_CODEC_OIDC_AUDIENCE: required with "
            "COUNTERSIGN_CODEC_OIDC_ISSUER (the audience your issuer puts in the UI's access "
            "tokens, e.g. its API identifier or client id)"
        )
    return OidcVerifier(
        settings.codec_oidc_issuer,
        settings.codec_oidc_audience,
        # An empty variable (e.g. docker compose's `${VAR:-}`) means unset.
        jwks_url=settings.codec_oidc_jwks_url or None,
        required_group=settings.codec_oidc_required_group or None,
        groups_claim=settings.codec_oidc_groups_claim,
    )


def build_codec_app(settings: Settings) -> Starlette:
    from countersign.activities.payload_keys import load_payload_keys
    from countersign.credentials import get_secret
    from countersign.workers.codec import EncryptionCodec

    keys = load_payload_keys(settings)
    token = get_secret(settings.codec_token_credential)
    oidc = oidc_verifier(settings)
    if settings.codec_capability_url:
        log.warning(
            "codec.capability_url_on",
            warning="DEVELOPMENT ONLY: /codec/k/TOKEN decodes every payload for whoever holds "
            "the URL, and a Temporal UI without login publishes it on its settings endpoint. "
            "Unset COUNTERSIGN_CODEC_CAPABILITY_URL outside development.",
        )
    if oidc is not None and urlsplit(oidc.issuer).scheme != "https":
        log.warning(
            "codec.oidc_issuer_not_https",
            issuer=oidc.issuer,
            warning="the issuer's signing keys are fetched without TLS: development only",
        )
    if oidc is None:
        log.info(
            "codec.no_user_tokens",
            note="COUNTERSIGN_CODEC_OIDC_ISSUER is not set: only the service token decodes",
        )
    return codec_app(
        EncryptionCodec(keys),
        token,
        origin_of(settings.temporal_ui_url),
        oidc=oidc,
        capability_url=settings.codec_capability_url,
    )


async def serve_codec(settings: Settings, host: str | None = None) -> None:
    app = build_codec_app(settings)
    url = urlsplit(settings.codec_url)
    # No access log: a capability URL carries the token in its path.
    config = uvicorn.Config(
        app,
        host=host or url.hostname or "127.0.0.1",
        port=url.port or 80,
        access_log=False,
        log_config=None,
    )
    log.info(
        "codec.started",
        url=settings.codec_url,
        ui_origin=origin_of(settings.temporal_ui_url),
        oidc_issuer=settings.codec_oidc_issuer,
        required_group=settings.codec_oidc_required_group,
        capability_url=settings.codec_capability_url,
    )
    await uvicorn.Server(config).serve()
