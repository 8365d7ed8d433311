"""The deployment files: docker-compose.yml is valid Compose and scales the worker with no
shared volume (state in PostgreSQL, secrets provisioned per service); the image installs the
wheel."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parent.parent


def compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    return None


@pytest.fixture(scope="module")
def compose() -> dict:
    command = compose_command()
    if command is None:
        pytest.skip("no Compose client (apt-get install docker-compose) to validate with")
    checked = subprocess.run(
        [*command, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert checked.returncode == 0, checked.stderr
    resolved = subprocess.run(
        [*command, "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    return yaml.safe_load(resolved.stdout)


def test_compose_file_is_valid_and_has_every_part(compose: dict) -> None:
    services = compose["services"]
    assert {
        "postgresql",
        "temporal",
        "temporal-ui",
        "worker",
        "codec",
        "gateway",
        "mailpit",
        "state-db",
    } <= set(services)
    assert services["temporal"]["environment"]["DB"] == "postgres12"
    assert services["gateway"]["command"] == ["gateway"]


def test_workers_scale_and_share_settings(compose: dict) -> None:
    worker = compose["services"]["worker"]
    # A fixed host port would make `--scale worker=3` fail on the second replica.
    assert not worker.get("ports")
    env = worker["environment"]
    assert env["COUNTERSIGN_TEMPORAL_ADDRESS"] == "temporal:7233"
    assert env["COUNTERSIGN_TASK_QUEUE"] == "countersign"
    assert env["COUNTERSIGN_METRICS_ADDRESS"] == "0.0.0.0:9464"
    assert worker["depends_on"]["setup"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["state-db"]["condition"] == "service_healthy"
    # JSON-valued settings survive Compose's interpolation intact.
    assert json.loads(env["COUNTERSIGN_EMAIL"])["smtp_host"] == "mailpit"
    # Approvers' addresses are in the identity directory, one file for every service.
    assert env["COUNTERSIGN_DIRECTORY_PATH"] == "/run/secrets/directory.toml"


def test_ui_uses_the_codec_server_and_the_codec_server_only_its_origin(compose: dict) -> None:
    ui = compose["services"]["temporal-ui"]["environment"]
    codec = compose["services"]["codec"]["environment"]
    assert ui["TEMPORAL_CODEC_ENDPOINT"].startswith(codec["COUNTERSIGN_CODEC_URL"] + "/codec")
    assert codec["COUNTERSIGN_TEMPORAL_UI_URL"] == ui["TEMPORAL_CORS_ORIGINS"]


def test_image_installs_the_wheel_and_keeps_no_source_on_the_path() -> None:
    # As users install it: one package, `countersign`; the bare folder names stay unclaimed.
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "PYTHONPATH" not in dockerfile and "--editable" not in dockerfile
    assert "RUN pip install /src" in dockerfile and "rm -rf /src" in dockerfile
    for folder in ("countersign", "workers", "agents", "activities", "guardrails", "demo"):
        assert f"COPY {folder} /src/{folder}" in dockerfile


COUNTERSIGN_SERVICES = ("worker", "gateway", "codec")


def test_no_countersign_service_shares_a_volume_state_is_in_postgres(compose: dict) -> None:
    services = compose["services"]
    for name in COUNTERSIGN_SERVICES:
        # A volume here would be per-machine state that another host cannot see.
        assert not services[name].get("volumes"), name
        env = services[name]["environment"]
        assert env["COUNTERSIGN_STATE_DSN"] == "postgresql://countersign@state-db:5432/countersign"
        assert env["COUNTERSIGN_STATE_PASSWORD_CREDENTIAL"] == "state-db"
    db = services["state-db"]
    assert db["environment"]["POSTGRES_USER"] == "countersign"
    assert db["environment"]["POSTGRES_DB"] == "countersign"
    assert db["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/state-db"
    assert db["volumes"] and db["healthcheck"]


def _secret_names(service: dict) -> set[str]:
    return {s["source"] if isinstance(s, dict) else s for s in service.get("secrets", [])}


def test_every_service_gets_the_secrets_it_needs_and_setup_provisions_them(
    compose: dict,
) -> None:
    services = compose["services"]
    declared = compose["secrets"]
    for name in COUNTERSIGN_SERVICES:
        env = services[name]["environment"]
        assert env["COUNTERSIGN_KEYRING_BACKEND"] == "countersign.credentials.SecretFiles"
        assert env["COUNTERSIGN_SECRETS_DIR"] == "/run/secrets"
        assert _secret_names(services[name]) <= set(declared)
    # What each process reads from its keyring: payload keys (every Temporal client), the
    # state database's password; workers also sign the audit and call the shop.
    assert {"payload-keys", "state-db", "audit-signing", "shop"} <= _secret_names(
        services["worker"]
    )
    assert {"payload-keys", "state-db", "gateway-csrf-key", "identity.gateway"} <= _secret_names(
        services["gateway"]
    )
    for name in COUNTERSIGN_SERVICES:
        assert "directory.toml" in _secret_names(services[name]), name
    assert {"payload-keys", "codec-token"} <= _secret_names(services["codec"])
    setup = " ".join(services["setup"]["command"])
    made_by_commands = ("payload-keys", "codec-token", "audit-signing")
    made_by_identity_dev = ("directory.toml", "identity.gateway", "identity.erin")
    for secret in declared:
        assert secret in setup or secret in made_by_commands + made_by_identity_dev, secret
    assert "keys init" in setup and "audit init-key" in setup and "identity dev" in setup


def test_the_workers_environment_loads_as_valid_settings(
    compose: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from countersign.settings import load_settings

    for key, value in compose["services"]["worker"]["environment"].items():
        monkeypatch.setenv(key, str(value))
    settings = load_settings()
    assert settings.state_dsn and settings.audit_location == settings.state_dsn
    assert str(settings.secrets_dir) == "/run/secrets"


def test_secrets_stay_out_of_git_and_the_image() -> None:
    assert "secrets/" in (ROOT / ".gitignore").read_text().split()
    assert "secrets" in (ROOT / ".dockerignore").read_text().split()
