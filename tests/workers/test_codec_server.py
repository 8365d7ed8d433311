"""The codec server: decodes for the Temporal UI's origin with the token, refuses the rest,
and logs every decode without its contents."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator

import httpx
import pytest
from temporalio.api.common.v1 import Payload

from workers.codec import EncryptionCodec, load_payload_keys
from workers.codec_server import capability_endpoint
from workers.credentials import ensure_secret
from workers.devstack import Service, free_port, start_codec_server
from workers.settings import Settings

UI = "http://127.0.0.1:8233"
SECRET_TEXT = b'{"email": "grace@example.com", "amount_cents": 18900}'


@pytest.fixture(scope="module")
def codec(settings: Settings) -> Iterator[tuple[Settings, Service]]:
    codec_settings = settings.model_copy(
        update={"codec_url": f"http://127.0.0.1:{free_port()}", "temporal_ui_url": UI + "/"}
    )
    ensure_secret(codec_settings.codec_token_credential)
    service = start_codec_server(settings.state_dir, codec_settings)
    yield codec_settings, service
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


def sealed(settings: Settings) -> Payload:
    plain = Payload(metadata={"encoding": b"json/plain"}, data=SECRET_TEXT)
    return EncryptionCodec(load_payload_keys(settings)).encrypt(plain)


def test_decodes_for_the_ui_origin_with_the_token(
    codec: tuple[Settings, Service], settings: Settings
) -> None:
    conf, service = codec
    token = ensure_secret(conf.codec_token_credential)
    body = as_json(sealed(settings))
    namespace = f"ns-{uuid.uuid4().hex[:6]}"
    with httpx.Client(timeout=10) as http:
        pre = http.options(
            f"{conf.codec_url}/codec/decode",
            headers={
                "Origin": UI,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-namespace,authorization",
            },
        )
        assert pre.status_code == 204
        assert pre.headers["access-control-allow-origin"] == UI
        assert "authorization" in pre.headers["access-control-allow-headers"].lower()
        for url, auth in [
            (f"{conf.codec_url}/codec/decode", {"Authorization": f"Bearer {token}"}),
            # The form the Temporal UI is configured with: it cannot send our bearer token.
            (capability_endpoint(conf, token) + "/decode", {}),
        ]:
            r = http.post(url, json=body, headers={"Origin": UI, "X-Namespace": namespace, **auth})
            assert r.status_code == 200, r.text
            assert r.headers["access-control-allow-origin"] == UI
            decoded = r.json()["payloads"][0]
            assert base64.b64decode(decoded["data"]) == SECRET_TEXT
        # A command-line client sends no Origin; the token is enough.
        r = http.post(
            f"{conf.codec_url}/codec/encode",
            json={"payloads": [{"data": base64.b64encode(b"hi").decode()}]},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 200
        assert (
            base64.b64decode(r.json()["payloads"][0]["metadata"]["encoding"]) == b"binary/encrypted"
        )

    log = service.log_path.read_text()
    decodes = [line for line in log.splitlines() if "codec.decode" in line and namespace in line]
    assert len(decodes) == 2
    assert any("bearer" in line for line in decodes) and any("url" in line for line in decodes)
    # Neither the payload contents nor the token reach the log.
    assert "grace@example.com" not in log and "18900" not in log
    assert token not in log


def test_refuses_other_origins_and_missing_or_wrong_tokens(
    codec: tuple[Settings, Service], settings: Settings
) -> None:
    conf, service = codec
    token = ensure_secret(conf.codec_token_credential)
    body = as_json(sealed(settings))
    decode = f"{conf.codec_url}/codec/decode"
    with httpx.Client(timeout=10) as http:
        for origin in ("http://evil.example", "http://localhost:8233", "https://127.0.0.1:8233"):
            pre = http.options(
                decode, headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
            )
            assert pre.status_code == 403
            assert "access-control-allow-origin" not in pre.headers
            r = http.post(
                decode, json=body, headers={"Origin": origin, "Authorization": f"Bearer {token}"}
            )
            assert r.status_code == 403, origin
            assert "grace" not in r.text
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
            r = http.post(decode, json=body, headers={"Origin": UI, **headers})
            assert r.status_code == 401
            # The UI can read the refusal (so it can say why), never the payload.
            assert r.headers["access-control-allow-origin"] == UI
        r = http.post(capability_endpoint(conf, "wrong") + "/decode", json=body)
        assert r.status_code == 401
        r = http.post(decode, content=b"not json", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 400
    log = service.log_path.read_text()
    assert "codec.refused" in log and "evil.example" in log
