"""`countersign dev` stops every service it started however it is told to stop (Ctrl-C,
SIGTERM from a supervisor or `timeout`, SIGHUP from a closed terminal), and a later `dev`
stops the services a killed one left behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from countersign.guardrails.policy import DEFAULT_POLICY_PATH
from countersign.settings import load_settings
from countersign.workers.devstack import port_of, port_open, settings_env
from tests.conftest import dev_env

PORT_SETTINGS = (
    "COUNTERSIGN_TEMPORAL_ADDRESS",
    "COUNTERSIGN_SYSTEMS__SHOP__URL",
    "COUNTERSIGN_GATEWAY_URL",
    "COUNTERSIGN_CODEC_URL",
    "COUNTERSIGN_OPENAI_BASE_URL",
    "COUNTERSIGN_TEMPORAL_UI_URL",
)


def start_dev(env: dict[str, str], out: Path, *args: str) -> subprocess.Popen[bytes]:
    with out.open("w") as log:
        dev = subprocess.Popen(
            [sys.executable, "-m", "countersign.workers", "dev", *args],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 120
    while "Ctrl-C stops the stack" not in out.read_text():
        assert dev.poll() is None, out.read_text()
        assert time.monotonic() < deadline, out.read_text()
        time.sleep(0.2)
    return dev


def _stat(pid: str) -> list[str]:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return text.rsplit(")", 1)[-1].split()  # state, ppid, pgrp, session, ...


def processes() -> dict[int, list[str]]:
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(entry)):
            found[int(entry)] = stat
    return found


def sessions_of_children(parent: int) -> set[int]:
    """Every service runs in its own session: the sessions of the parent's children."""
    return {int(stat[3]) for stat in processes().values() if int(stat[1]) == parent}


def alive_in(sessions: set[int]) -> list[int]:
    return [pid for pid, stat in processes().items() if int(stat[3]) in sessions and stat[0] != "Z"]


def assert_ports_free(env: dict[str, str]) -> None:
    for key in PORT_SETTINGS:
        port = port_of(env[key].removesuffix("/v1"))
        assert not port_open(port), f"{key} (port {port}) still answers"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_dev_stops_every_service_on_sigterm_and_sighup(tmp_path: Path, signum: int) -> None:
    env = dev_env(tmp_path)
    dev = start_dev(env, tmp_path / "dev.out")
    sessions = sessions_of_children(dev.pid)
    # temporal, codec server, shop, model server, mail catcher, gateway, worker
    assert len(sessions) == 7, sessions
    (pid_file,) = (tmp_path / "stacks").glob("*.json")
    assert pid_file.name.startswith(f"{dev.pid}-")

    dev.send_signal(signum)
    assert dev.wait(60) == 128 + signum
    assert alive_in(sessions) == []
    assert_ports_free(env)
    assert list((tmp_path / "stacks").glob("*.json")) == []


def test_a_second_dev_stops_the_stack_a_killed_one_left(tmp_path: Path) -> None:
    env = dev_env(tmp_path)
    first = start_dev(env, tmp_path / "first.out")
    left = sessions_of_children(first.pid)
    first.kill()  # SIGKILL: no chance to clean up
    first.wait()
    assert len(alive_in(left)) >= 7

    second = start_dev(env, tmp_path / "second.out")
    try:
        assert alive_in(left) == []
        said = (tmp_path / "second.out").read_text()
        assert "stopped a stale stack left by a killed `dev`/`demo`:" in said
        assert "temporal (pid" in said and "worker (pid" in said
        ours = sessions_of_children(second.pid)
        assert len(ours) == 7
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 128 + signal.SIGTERM
    assert alive_in(ours) == []
    assert_ports_free(env)


def test_dev_whose_worker_fails_its_checks_says_why_and_leaves_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "policy"
    shutil.copytree(DEFAULT_POLICY_PATH, folder)
    toml = folder / "policy.toml"
    toml.write_text(toml.read_text().replace("[modes]\n", '[modes]\n"nobody" = "shadow"\n'))
    env = {**dev_env(tmp_path / "state"), "COUNTERSIGN_POLICY_PATH": str(folder)}
    done = subprocess.run(
        [sys.executable, "-m", "countersign.workers", "dev"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(
        f"countersign: worker did not start: {toml}: [modes] names agent 'nobody'"
    )
    # Every process the stack started carries its state folder in its environment.
    assert [pid for pid in processes() if str(tmp_path) in _environ(pid)] == []
    assert_ports_free(env)


def _environ(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def test_dev_plays_a_projects_own_model_scripts(tmp_path: Path) -> None:
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "greet.json").write_text(
        '{"name": "greet", "match": "(?i)hello", "turns": [{"say": "Hello from my project."}]}'
    )
    env = dev_env(tmp_path / "state")
    dev = start_dev(env, tmp_path / "dev.out", "--scripts", str(scripts))
    try:
        reply = httpx.post(
            f"{env['COUNTERSIGN_OPENAI_BASE_URL']}/chat/completions",
            json={"model": "scripted", "messages": [{"role": "user", "content": "hello"}]},
            timeout=10,
        ).json()
        assert reply["choices"][0]["message"]["content"] == "Hello from my project."
    finally:
        dev.send_signal(signal.SIGTERM)
        assert dev.wait(60) == 128 + signal.SIGTERM


def test_dev_with_a_folder_that_holds_no_scripts_says_so_and_starts_nothing(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "countersign.workers", "dev", "--scripts", str(tmp_path)],
        env={**os.environ, **dev_env(tmp_path / "state")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert f"{tmp_path}: not a folder of model scripts (*.json)" in done.stderr
    assert not (tmp_path / "state" / "stacks").exists()


def test_a_child_process_gets_the_settings_made_in_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """settings_env carries what a parent set in code (tests, benchmarks, the recorder) to the
    workers it starts: one that does not require policy activation starts children that do
    not either (a benchmark's worker processes refused to start)."""
    parent = load_settings(
        state_dir=tmp_path,
        require_policy_activation=False,
        max_cached_workflows=7,
        evict_parked_max_events=3,
        encrypt_payloads=False,
    )
    for name in list(os.environ):
        if name.startswith("COUNTERSIGN_"):
            monkeypatch.delenv(name)
    for name, value in settings_env(parent).items():
        monkeypatch.setenv(name, value)
    child = load_settings()
    for field in (
        "require_policy_activation",
        "max_cached_workflows",
        "evict_parked_max_events",
        "encrypt_payloads",
        "policy_path",
        "task_queue",
    ):
        assert getattr(child, field) == getattr(parent, field), field
