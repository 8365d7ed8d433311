"""Settings, from environment variables (prefix COUNTERSIGN_), with clear errors.

Secrets are never settings: settings name the keyring entry a secret lives under.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import AliasChoices, BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from guardrails.policy import DEFAULT_POLICY_PATH


class SettingsError(Exception):
    """Settings are invalid. The message names the environment variable and the problem."""


class SystemSettings(BaseModel):
    """A system of record the tools call over HTTP."""

    url: str
    # keyring entry (service "countersign") holding the bearer token; default: the system name.
    credential: str = ""
    timeout_seconds: float = 10.0


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="COUNTERSIGN_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    task_queue: str = "countersign"
    # Temporal Cloud: TLS on, and the keyring entry that holds the API key.
    temporal_tls: bool = False
    temporal_api_key_credential: str | None = None
    temporal_ui_url: str = "http://127.0.0.1:8233"

    # Protected payloads: every payload AES-GCM encrypted with keys from the keyring entry
    # below (see workers/codec.py). Every client and worker of a deployment must agree.
    encrypt_payloads: bool = True
    payload_keys_credential: str = "payload-keys"
    # The codec server lets the Temporal UI (only from its origin, temporal_ui_url) and
    # operators holding the token in keyring entry `codec_token_credential` read payloads.
    codec_url: str = "http://127.0.0.1:8105"
    codec_token_credential: str = "codec-token"

    # Prometheus metrics of the worker (Temporal SDK + Countersign), e.g. 127.0.0.1:9464;
    # empty: off. Tracing: OpenTelemetry spans for workflows and activities (needs an
    # OpenTelemetry SDK tracer provider configured by the deployment to export them).
    metrics_address: str = ""
    tracing: bool = False
    # USD per million tokens (prompt, completion) by model name, for cost figures.
    model_prices: dict[str, tuple[float, float]] = {}

    state_dir: Path = Path(".countersign")
    policy_path: Path = DEFAULT_POLICY_PATH
    # keyring backend, set explicitly (never auto-detected): a class path.
    keyring_backend: str = "keyrings.alt.file.PlaintextKeyring"

    openai_base_url: str = Field(
        default="http://127.0.0.1:8102/v1",
        validation_alias=AliasChoices("COUNTERSIGN_OPENAI_BASE_URL", "OPENAI_BASE_URL"),
    )
    openai_timeout_seconds: float = 60.0

    systems: dict[str, SystemSettings] = {
        "shop": SystemSettings(url="http://127.0.0.1:8101", credential="shop")
    }

    # Bounds on one tool call; Temporal retries with back-off within these.
    tool_start_to_close_seconds: float = 30.0
    tool_max_attempts: int = Field(default=5, ge=1)

    @field_validator("systems", mode="after")
    @classmethod
    def _credential_defaults_to_system_name(
        cls, systems: dict[str, SystemSettings]
    ) -> dict[str, SystemSettings]:
        return {
            name: conf if conf.credential else conf.model_copy(update={"credential": name})
            for name, conf in systems.items()
        }

    @cached_property
    def audit_path(self) -> Path:
        return self.state_dir / "audit.sqlite3"

    @cached_property
    def transcript_path(self) -> Path:
        return self.state_dir / "transcripts.sqlite3"

    @cached_property
    def keyring_path(self) -> Path:
        return self.state_dir / "keyring.cfg"


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment; raise SettingsError naming the bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as e:
        problems = "; ".join(
            f"COUNTERSIGN_{'__'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in e.errors()
        )
        raise SettingsError(f"invalid settings: {problems}") from e
