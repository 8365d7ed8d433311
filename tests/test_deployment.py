"""The deployment files: docker-compose.yml is valid Compose and scales the worker; the image
keeps the repo root first on the path."""

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
    # JSON-valued settings survive Compose's interpolation intact.
    assert json.loads(env["COUNTERSIGN_EMAIL"])["smtp_host"] == "mailpit"
    assert set(json.loads(env["COUNTERSIGN_APPROVERS"])) == {"alice", "bob", "carol"}


def test_ui_uses_the_codec_server_and_the_codec_server_only_its_origin(compose: dict) -> None:
    ui = compose["services"]["temporal-ui"]["environment"]
    codec = compose["services"]["codec"]["environment"]
    assert ui["TEMPORAL_CODEC_ENDPOINT"].startswith(codec["COUNTERSIGN_CODEC_URL"] + "/codec")
    assert codec["COUNTERSIGN_TEMPORAL_UI_URL"] == ui["TEMPORAL_CORS_ORIGINS"]


def test_image_puts_the_repo_root_first_on_the_path() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "PYTHONPATH=/app" in dockerfile and "WORKDIR /app" in dockerfile
    for package in ("workers", "agents", "activities", "guardrails"):
        assert f"COPY {package} ./{package}" in dockerfile
