"""The codec server: lets authorized operators read encrypted payloads in the Temporal UI.

It speaks Temporal's remote codec protocol (`POST …/encode`, `POST …/decode`, body and answer
`{"payloads": [...]}` in protobuf JSON). Who may use it:

- browsers only from the configured Temporal UI origin (exact match; every other origin is
  refused, preflight included);
- only with the token from the keyring: `Authorization: Bearer TOKEN` (the Temporal CLI's
  `--codec-auth`, scripts), or, for the Temporal UI, which can forward only its own SSO token,
  a capability URL `…/codec/k/TOKEN` configured as the UI's codec endpoint.

Every decode is logged (who, origin, namespace, how many payloads), never payload contents.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
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

from workers.settings import Settings

log = structlog.get_logger(__name__)

ALLOWED_HEADERS = "Content-Type, X-Namespace, Authorization"


def origin_of(url: str) -> str:
    """`scheme://host[:port]` of a URL, as browsers send it in the Origin header."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def capability_endpoint(settings: Settings, token: str) -> str:
    """The codec endpoint to configure in the Temporal UI (it appends /encode and /decode)."""
    return f"{settings.codec_url.rstrip('/')}/codec/k/{token}"


def codec_app(codec: PayloadCodec, token: str, ui_origin: str) -> Starlette:
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
            reason=reason,
            direction=direction,
            origin=request.headers.get("origin"),
            client=request.client.host if request.client else None,
        )
        return PlainTextResponse(reason, status, headers=cors(request.headers.get("origin")))

    def authorized(request: Request) -> str | None:
        """How the caller proved it holds the token ("bearer" or "url"), or None."""
        given = request.path_params.get("token")
        via = "url"
        if given is None:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            via = "bearer" if scheme.lower() == "bearer" else ""
        if via and given and hmac.compare_digest(given.encode(), token.encode()):
            return via
        return None

    def endpoint(
        direction: str, convert: Callable[[Payloads], Awaitable[Payloads]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            origin = request.headers.get("origin")
            if origin is not None and origin != ui_origin:
                return refuse(request, direction, 403, f"origin {origin} is not allowed")
            if request.method == "OPTIONS":
                return Response(status_code=204, headers=cors(origin))
            via = authorized(request)
            if via is None:
                return refuse(request, direction, 401, "a valid codec token is required")
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
                namespace=request.headers.get("x-namespace"),
                payloads=len(payloads.payloads),
                origin=origin,
                client=request.client.host if request.client else None,
                auth=via,
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


def build_codec_app(settings: Settings) -> Starlette:
    from workers.codec import EncryptionCodec, load_payload_keys
    from workers.credentials import get_secret

    keys = load_payload_keys(settings)
    token = get_secret(settings.codec_token_credential)
    return codec_app(EncryptionCodec(keys), token, origin_of(settings.temporal_ui_url))


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
    log.info("codec.started", url=settings.codec_url, ui_origin=origin_of(settings.temporal_ui_url))
    await uvicorn.Server(config).serve()
