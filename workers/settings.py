"""Settings, from environment variables (prefix COUNTERSIGN_), with clear errors.

Secrets are never settings: settings name the keyring entry a secret lives under.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

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

    # The audit trail: SQLite in the state folder, or PostgreSQL (`postgresql://user@host/db`;
    # the password from keyring entry `audit_password_credential`, or libpq's PGPASSWORD/.pgpass).
    audit_dsn: str | None = None
    audit_password_credential: str | None = None
    # A signed checkpoint every N records (and on `countersign audit checkpoint`).
    audit_checkpoint_every: int = Field(default=100, ge=1)
    # keyring entry holding the Ed25519 signing key (`countersign audit init-key` creates it).
    audit_signing_credential: str = "audit-signing"
    # The public key auditors verify with (base64); default: derived from the signing key.
    audit_public_key: str | None = None
    # Fields whose values are personal data, redacted from logs and audit: "email,phone".
    pii_fields: Annotated[list[str], NoDecode] = []

    @field_validator("pii_fields", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("audit_dsn", mode="after")
    @classmethod
    def _postgres_without_password(cls, dsn: str | None) -> str | None:
        if dsn is None or not dsn.strip():
            return None
        if not dsn.startswith(("postgresql://", "postgres://", "sqlite:///")):
            raise ValueError("expected postgresql://user@host:port/dbname or sqlite:///path")
        if dsn.startswith("postgres"):
            from psycopg.conninfo import conninfo_to_dict

            try:
                info = conninfo_to_dict(dsn)
            except Exception as e:  # psycopg raises ProgrammingError for a malformed DSN
                raise ValueError(f"not a valid PostgreSQL DSN: {e}") from None
            if info.get("password"):
                raise ValueError(
                    "the DSN holds a password; keep it in the keyring instead "
                    "(COUNTERSIGN_AUDIT_PASSWORD_CREDENTIAL) or in PGPASSWORD/.pgpass"
                )
        return dsn

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
    def audit_location(self) -> str:
        """Where the audit trail lives: the DSN, or the SQLite file in the state folder."""
        return self.audit_dsn or str(self.audit_path)

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
