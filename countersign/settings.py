"""Settings, from environment variables (prefix COUNTERSIGN_), with clear errors.

Secrets are never settings: settings name the keyring entry a secret lives under.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from countersign.guardrails.knowledge import DEFAULT_KNOWLEDGE_PATH
from countersign.guardrails.policy import DEFAULT_POLICY_PATH

if TYPE_CHECKING:
    from countersign.guardrails.identity import DirectorySource


class SettingsError(Exception):
    """Settings are invalid. The message names the environment variable and the problem."""


class SystemSettings(BaseModel):
    """A system of record the tools call over HTTP."""

    url: str
    # keyring entry (service "countersign") holding the bearer token; default: the system name.
    credential: str = ""
    timeout_seconds: float = 10.0


DEFAULT_SYSTEMS = {"shop": SystemSettings(url="http://127.0.0.1:8101", credential="shop")}


class SlackSettings(BaseModel):
    """Approval requests posted to a Slack channel, decided with its buttons."""

    channel: str  # channel id, e.g. C012ABCDEF
    api_url: str = "https://slack.com/api"
    bot_token_credential: str = "slack-bot-token"
    signing_secret_credential: str = "slack-signing-secret"
    timeout_seconds: float = 10.0


class EmailSettings(BaseModel):
    """Approval emails with one decision link per approver and verb."""

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 587
    # none: plain SMTP (a local relay or the dev mail catcher); starttls; tls (implicit, 465).
    smtp_security: Literal["none", "starttls", "tls"] = "starttls"
    smtp_username: str | None = None
    smtp_password_credential: str | None = None
    sender: str = "Countersign <countersign@localhost>"
    timeout_seconds: float = 10.0


class WebhookSettings(BaseModel):
    """Notices POSTed as signed JSON (Teams, a chat bot, a ticket system)."""

    urls: list[str] = Field(min_length=1)
    # One HMAC secret signs the notices we send and verifies the decisions called back.
    secret_credential: str = "webhook-secret"
    # The integration's identity in the directory: a callback decides as it, never as a
    # person (it relays a person's own signed envelope for that).
    identity: str = "webhook"
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
    # People signed in to the Temporal UI (codec setting "pass access token"): their access
    # token is verified against this OIDC issuer, for this audience. JWKS URL default: the
    # issuer's discovery document. If a group is set, the token's groups claim must hold it.
    codec_oidc_issuer: str | None = None
    codec_oidc_audience: str | None = None
    codec_oidc_jwks_url: str | None = None
    codec_oidc_required_group: str | None = None
    codec_oidc_groups_claim: str = "groups"
    # Development only (`countersign dev` turns it on): the token in the URL, /codec/k/TOKEN,
    # for a UI without login. Whoever learns that URL reads every payload.
    codec_capability_url: bool = False

    # Prometheus metrics of the worker (Temporal SDK + Countersign), e.g. 127.0.0.1:9464;
    # empty: off. Tracing: OpenTelemetry spans for workflows and activities (needs an
    # OpenTelemetry SDK tracer provider configured by the deployment to export them).
    metrics_address: str = ""
    tracing: bool = False
    # Runs a worker keeps in memory between their workflow tasks (Temporal's sticky workflow
    # cache; default: the SDK's); beyond this many the least recently used is evicted, and
    # replayed from its history when its next event arrives.
    max_cached_workflows: int = Field(default=1000, ge=0)
    # A run parked on an approval (waiting only for people) leaves the cache once it has
    # stayed parked for half a second, if its history has at most this many events, and is
    # replayed when its decision arrives: kept, it would hold ~0.4 MB for as long as people
    # take. 0: parked runs stay cached. (It was off for a while: a signal that reached a run
    # being evicted could wait for a workflow-task timeout, ~10 s; workers/sandbox.py Parking
    # says why and how that is avoided.) BENCHMARKS.md, section 5: the memory, and the
    # latency a replay adds.
    evict_parked_max_events: int = Field(default=100, ge=0)
    # The currency money is shown in to people (ISO 4217), unless an argument names its own.
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    # USD per million tokens (prompt, completion) by model name, for cost figures.
    model_prices: dict[str, tuple[float, float]] = {}

    state_dir: Path = Path(".countersign")
    # Plugins (workers/plugins.py) to load: installed plugin names or module paths,
    # "demo,my_pkg.tools"; unset: every installed plugin. An agents file of this project.
    plugins: Annotated[list[str] | None, NoDecode] = None
    agents_file: Path | None = None
    policy_path: Path = DEFAULT_POLICY_PATH
    # A candidate policy evaluated beside the active one; its flips are recorded, never enforced.
    candidate_policy_path: Path | None = None
    # The business's own documents (Markdown) the agents search and cite (guardrails/knowledge.py).
    knowledge_path: Path = DEFAULT_KNOWLEDGE_PATH
    # A policy version is enforced only once a verified person activated it (workers/policies.py).
    require_policy_activation: bool = True
    # Who can prove who they are (see guardrails/identity.py): default STATE/directory.toml.
    directory_path: Path | None = None
    # More directory files whose entries join it: the plugins' (added at start-up, see
    # workers/plugins.py) and any listed here, "a.toml,b.toml". One name in two of them must be
    # one identity (same keys), or the start stops.
    extra_directories: Annotated[list[Path], NoDecode] = []
    # The approval gateway's own identity in the directory; its attestation key is in the
    # gateway host's keyring as `identity.<name>`.
    gateway_identity: str = "gateway"
    # keyring backend, set explicitly (never auto-detected): a class path.
    keyring_backend: str = "keyrings.alt.file.PlaintextKeyring"
    # The folder of the `countersign.credentials.SecretFiles` backend (one file per secret).
    secrets_dir: Path = Path("/run/secrets")

    openai_base_url: str = Field(
        default="http://127.0.0.1:8102/v1",
        validation_alias=AliasChoices("COUNTERSIGN_OPENAI_BASE_URL", "OPENAI_BASE_URL"),
    )
    openai_timeout_seconds: float = 60.0

    # Systems of record, by name. Configuring one (COUNTERSIGN_SYSTEMS__BILLING__URL) adds it
    # to the defaults (the demo shop) instead of replacing them.
    systems: dict[str, SystemSettings] = dict(DEFAULT_SYSTEMS)

    # The approval gateway: the base URL approvers' links and chat callbacks reach.
    gateway_url: str = "http://127.0.0.1:8104"
    # Notification channels: a channel that is not configured is skipped. Approvers' email
    # addresses and Slack user ids are in the identity directory.
    slack: SlackSettings | None = None
    email: EmailSettings | None = None
    webhook: WebhookSettings | None = None
    # `countersign dev` only: the local mail catcher that the dev stack's email goes to.
    mail_catcher_port: int = 8125

    # Bounds on one model reply (a compromised or broken model can send anything): a reply
    # larger than this, or with more tool calls, executes nothing (activities/model.py).
    max_reply_bytes: int = Field(default=64 * 1024, ge=1024)
    # At most 999: a model call numbers each step's audit records in blocks of 1,000
    # (activities/model.py AHEAD_STRIDE), a record per tool call.
    max_tool_calls_per_turn: int = Field(default=16, ge=1, le=999)

    # Bounds on one tool call; Temporal retries with back-off within these. A side effect's
    # activity heartbeats, so a worker that dies mid-call is noticed after
    # `tool_heartbeat_seconds`, not after the whole start-to-close.
    tool_start_to_close_seconds: float = Field(default=30.0, gt=0)
    tool_max_attempts: int = Field(default=5, ge=1)
    tool_heartbeat_seconds: float = Field(default=10.0, gt=0)
    # The same for the model call (one planning step).
    model_start_to_close_seconds: float = Field(default=120.0, gt=0)
    model_max_attempts: int = Field(default=4, ge=1)
    model_heartbeat_seconds: float = Field(default=10.0, gt=0)

    # Where everything that must be one per deployment lives (limits ledger, transcripts,
    # approval links, kill switch, audit trail): unset, SQLite files in the state folder (one
    # machine); `postgresql://user@host:5432/db`, one PostgreSQL database for a fleet. The
    # password comes from keyring entry `state_password_credential` (or PGPASSWORD/.pgpass).
    state_dsn: str | None = None
    state_password_credential: str | None = None
    # The audit trail elsewhere than the rest (older deployments set only this): SQLite path or
    # PostgreSQL DSN; default: state_dsn, else the state folder. Its password: keyring entry
    # `audit_password_credential`, else `state_password_credential`.
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

    @field_validator("pii_fields", "plugins", "extra_directories", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("audit_dsn", "state_dsn", mode="after")
    @classmethod
    def _postgres_without_password(cls, dsn: str | None, field: ValidationInfo) -> str | None:
        if dsn is None or not dsn.strip():
            return None
        store = (field.field_name or "").removesuffix("_dsn").upper()
        if store == "STATE" and not dsn.startswith(("postgresql://", "postgres://")):
            raise ValueError(
                "expected postgresql://user@host:port/dbname (leave it unset for SQLite files "
                "in COUNTERSIGN_STATE_DIR)"
            )
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
                    f"(COUNTERSIGN_{store}_PASSWORD_CREDENTIAL) or in PGPASSWORD/.pgpass"
                )
        return dsn

    @field_validator("systems", mode="before")
    @classmethod
    def _keep_default_systems(cls, systems: object) -> object:
        if not isinstance(systems, dict):
            return systems
        merged: dict[str, object] = {k: v.model_dump() for k, v in DEFAULT_SYSTEMS.items()}
        for name, conf in systems.items():
            default = merged.get(name)
            # A partial override (only __CREDENTIAL) keeps the default's other fields.
            both = isinstance(default, dict) and isinstance(conf, dict)
            merged[name] = {**default, **conf} if both else conf  # type: ignore[dict-item]
        return merged

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
        """Where the audit trail lives: its own DSN, the state DSN, or the SQLite file in the
        state folder."""
        return self.audit_dsn or self.state_dsn or str(self.audit_path)

    @cached_property
    def audit_credential(self) -> str | None:
        """The keyring entry holding the audit database's password, if any."""
        return self.audit_password_credential or self.state_password_credential

    @cached_property
    def transcript_path(self) -> Path:
        return self.state_dir / "transcripts.sqlite3"

    @cached_property
    def ledger_path(self) -> Path:
        return self.state_dir / "ledger.sqlite3"

    @cached_property
    def directory_file(self) -> Path:
        return self.directory_path or self.state_dir / "directory.toml"

    def directory(self) -> DirectorySource:
        """The identity directory, re-read when a file changes: the directory file joined by
        the extra ones. With extra files the default file may be missing (a plugin supplies
        everyone); a directory_path that is set must exist."""
        from countersign.guardrails.identity import DirectorySource

        required = self.directory_path is not None or not self.extra_directories
        return DirectorySource(self.directory_file, self.extra_directories, required=required)

    @cached_property
    def kill_switch_path(self) -> Path:
        return self.state_dir / "kill-switch.json"

    @cached_property
    def tokens_path(self) -> Path:
        return self.state_dir / "approval-links.sqlite3"

    def channel_credentials(self) -> list[str]:
        """Keyring entries the configured notification channels need."""
        names = []
        if self.slack:
            names += [self.slack.bot_token_credential, self.slack.signing_secret_credential]
        if self.email and self.email.smtp_password_credential:
            names.append(self.email.smtp_password_credential)
        if self.webhook:
            names.append(self.webhook.secret_credential)
        return names

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
