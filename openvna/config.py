"""Typed settings, built once at start-up and passed down (ARCHITECTURE.md property 9).

Sources, lowest priority first: defaults, a TOML file (``--config``), ``OPENVNA_*``
environment variables (nested with ``__``, e.g. ``OPENVNA_DIMSE__PORT``), then explicit
keyword arguments (the CLI flags). No other module reads the environment.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class DuplicatePolicy(StrEnum):
    """What to do when a SOP Instance UID arrives again with different bytes."""

    REJECT = "reject"
    OVERWRITE = "overwrite"
    KEEP_BOTH = "keep-both"


def valid_ae_title(value: str) -> str:
    """PS3.5 Table 6.2-1 (AE): 1 to 16 characters, no backslash or control characters."""
    stripped = value.strip()
    if not 1 <= len(stripped) <= 16 or "\\" in stripped or not stripped.isprintable():
        raise ValueError("an AE title is 1 to 16 characters without backslash")
    return stripped


class PeerConfig(BaseModel):
    """A remote DICOM application entity (destination of C-MOVE, allowed caller)."""

    model_config = ConfigDict(extra="forbid")

    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)

    @field_validator("ae_title")
    @classmethod
    def _valid_ae_title(cls, value: str) -> str:
        return valid_ae_title(value)


class DimseSettings(BaseModel):
    """DICOM upper-layer listener settings."""

    model_config = ConfigDict(extra="forbid")  # a mistyped key is an error, not ignored

    ae_title: str = "OPENVNA"
    port: int = Field(default=11112, ge=0, le=65535)
    max_pdu: int = Field(default=65536, ge=4096)
    max_associations: int = Field(default=32, ge=1)
    processes: int = Field(
        default=0, ge=0, le=64, description="DIMSE processes; 0 = one per core, at most 4"
    )
    network_timeout: float = 60.0
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    peers: list[PeerConfig] = Field(default_factory=list)

    @field_validator("ae_title")
    @classmethod
    def _valid_ae_title(cls, value: str) -> str:
        return valid_ae_title(value)


class HttpSettings(BaseModel):
    """HTTP listener: DICOMweb under ``/dicom-web``, the REST API, the viewer."""

    model_config = ConfigDict(extra="forbid")  # a mistyped key is an error, not ignored

    port: int = Field(default=8042, ge=0, le=65535)
    public_url: str | None = Field(
        default=None,
        description="external base URL (e.g. https://pacs.example.org) used in RetrieveURL "
        "and BulkDataURI; default: taken from each request's Host header",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="origins allowed to call the HTTP API from a browser ('*' for any)",
    )
    max_request_bytes: int = Field(
        default=4 * 1024**3,
        ge=1024,
        description="largest STOW-RS request body accepted (413 beyond it)",
    )
    max_compression_ratio: int = Field(
        default=200,
        ge=10,
        description="decoded bytes per received byte beyond which a gzip or deflate "
        "STOW-RS body is refused as a decompression bomb (413); checked past 32 MiB decoded",
    )
    qido_max_results: int = Field(
        default=10000,
        ge=1,
        description="most results one QIDO-RS response holds (Warning header when cut)",
    )
    viewer_dir: Path | None = Field(
        default=None,
        description="folder of the built OHIF viewer (its dist) served at /viewer",
    )


class IngestSettings(BaseModel):
    """Rules applied by the one ingest path."""

    model_config = ConfigDict(extra="forbid")  # a mistyped key is an error, not ignored

    duplicate_policy: DuplicatePolicy = DuplicatePolicy.REJECT
    max_dataset_bytes: int = Field(default=2 * 1024**3, ge=1024)


class AiSettings(BaseModel):
    """AI orchestration: where models are found and how their jobs run."""

    model_config = ConfigDict(extra="forbid")  # a mistyped key is an error, not ignored

    enabled: bool = Field(
        default=True,
        description="run AI jobs (the global stop switch "
        "at start; 'openvna ai stop' flips it at run time)",
    )
    models_dir: Path | None = Field(
        default=None,
        description="folder of model folders with manifest.toml; default: <data_dir>/models",
    )
    builtin_models: bool = Field(
        default=True, description="offer the reference models shipped with OpenVNA"
    )
    workers: int = Field(default=2, ge=1, le=64, description="AI jobs running at once")
    gpu_slots: int | None = Field(
        default=None, ge=0, description="GPU jobs at once; default: number of GPUs found"
    )
    poll_interval: float = Field(default=0.2, gt=0, le=10, description="seconds")
    nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="scheduling niceness of the AI worker process, "
        "so ingest keeps its speed while models run",
    )
    idle_priority: bool = Field(
        default=True,
        description="run AI jobs under Linux SCHED_IDLE: they get the CPU only when "
        "ingest and retrieval do not want it",
    )
    cpus: list[int] | None = Field(
        default=None,
        description="CPUs the AI worker and its jobs may use (Linux affinity); default: "
        "every CPU but the first, which stays free for ingest and retrieval",
    )
    retry_backoff: float = Field(
        default=5.0, ge=0, description="seconds before the first retry; doubles per attempt"
    )
    retention_days: int = Field(
        default=365, ge=1, description="provenance records older than this are deleted"
    )


class Role(StrEnum):
    """Who a principal is in the department; each maps to a set of permissions
    (openvna/security/permissions.py)."""

    ADMIN = "admin"
    RADIOLOGIST = "radiologist"
    TECHNOLOGIST = "technologist"
    REFERRING_PHYSICIAN = "referring_physician"
    RESEARCHER = "researcher"
    AI_SERVICE = "ai_service"
    AUDITOR = "auditor"


class TlsSettings(BaseModel):
    """Certificates for HTTPS and DICOM TLS (BCP 195: TLS 1.2 and newer only)."""

    model_config = ConfigDict(extra="forbid")

    certificate: Path | None = Field(
        default=None, description="PEM certificate chain of this server"
    )
    private_key: Path | None = Field(default=None, description="PEM private key of this server")
    ca_certificates: Path | None = Field(
        default=None,
        description="PEM CA bundle that client certificates must chain to (DICOM TLS "
        "and HTTPS client authentication)",
    )
    require_client_certificate: bool = Field(
        default=False, description="DICOM TLS peers must present a certificate from the CA"
    )
    dimse_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="port of the DICOM TLS listener (2762 is IANA's dicom-tls); "
        "None: no DICOM TLS listener",
    )

    @property
    def configured(self) -> bool:
        return self.certificate is not None and self.private_key is not None


class OidcSettings(BaseModel):
    """An external OAuth2/OpenID Connect identity provider whose bearer JWTs are accepted."""

    model_config = ConfigDict(extra="forbid")

    issuer: str | None = Field(default=None, description="expected 'iss'; enables OIDC")
    audience: str | None = Field(default=None, description="expected 'aud'")
    jwks_url: str | None = Field(
        default=None,
        description="JSON Web Key Set URL; default: jwks_uri from the issuer's "
        "/.well-known/openid-configuration",
    )
    algorithms: list[str] = Field(
        default_factory=lambda: ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384"],
        description="accepted signature algorithms (asymmetric only: 'none' and HMAC "
        "are always refused)",
    )
    username_claim: str = "preferred_username"
    roles_claim: str = Field(
        default="roles",
        description="claim holding role names (dotted path, e.g. realm_access.roles)",
    )
    client_id: str | None = Field(
        default=None, description="public client id the bundled viewer uses to log in"
    )
    leeway_seconds: int = Field(default=30, ge=0, le=300)


class AeAccess(BaseModel):
    """A DICOM application entity allowed to associate, and what it may do."""

    model_config = ConfigDict(extra="forbid")

    ae_title: str
    roles: list[Role] = Field(default_factory=lambda: [Role.TECHNOLOGIST])
    hosts: list[str] = Field(
        default_factory=list, description="addresses it must connect from (empty: any)"
    )
    certificate_subject: str | None = Field(
        default=None, description="TLS client certificate subject CN it must present"
    )

    @field_validator("ae_title")
    @classmethod
    def _valid_ae_title(cls, value: str) -> str:
        return valid_ae_title(value)


class AccessRule(BaseModel):
    """Study-level restriction for a role: its members see only matching studies
    (plus explicit grants and break-the-glass). A role without a rule sees every study
    its permissions allow, unless it is listed in ``grants_only_roles``."""

    model_config = ConfigDict(extra="forbid")

    role: Role
    institutions: list[str] = Field(default_factory=list)
    issuers_of_patient_id: list[str] = Field(default_factory=list)


class AuditSettings(BaseModel):
    """The audit trail (DICOM PS3.15 A.5 messages in a local hash chain)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    source_id: str = Field(default="OPENVNA", description="AuditSourceIdentification code")
    enterprise_site_id: str = ""
    syslog_host: str | None = Field(
        default=None, description="audit record repository (RFC 5424 over RFC 5425 TLS)"
    )
    syslog_port: int = Field(default=6514, ge=1, le=65535)
    syslog_tls: bool = True
    syslog_ca: Path | None = Field(default=None, description="CA that signed the repository")
    flush_interval: float = Field(default=0.2, gt=0, le=10, description="seconds")


class EncryptionSettings(BaseModel):
    """Envelope encryption of stored instances (AES-256-GCM)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    keyring_file: Path | None = Field(
        default=None,
        description="master keys (JSON keyring written by 'openvna keys'); "
        "default: <data_dir>/keys/keyring.json",
    )
    master_key: str | None = Field(
        default=None,
        description="base64 256-bit master key from the environment "
        "(OPENVNA_SECURITY__ENCRYPTION__MASTER_KEY) instead of a keyring file",
    )


class LimitSettings(BaseModel):
    """Hard limits where input enters (beyond dimse.max_pdu, ingest.max_dataset_bytes and
    http.max_request_bytes)."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int = Field(
        default=60000, ge=1, description="HTTP requests per client address per minute (429)"
    )
    associations_per_host: int = Field(
        default=16, ge=1, description="DICOM associations open at once from one address"
    )
    multipart_max_parts: int = Field(default=100000, ge=1)
    json_body_bytes: int = Field(
        default=16 * 1024**2, ge=1024, description="largest JSON request body (413)"
    )
    login_attempts_per_minute: int = Field(default=10, ge=1)


class SecuritySettings(BaseModel):
    """Authentication, authorisation, audit, TLS, encryption at rest and limits."""

    model_config = ConfigDict(extra="forbid")

    require_auth: bool = Field(
        default=False,
        description="every HTTP request and DICOM association must authenticate; "
        "mandatory (with TLS) when listening beyond loopback",
    )
    session_idle_minutes: int = Field(
        default=15, ge=1, description="automatic logoff after this much inactivity"
    )
    session_max_hours: int = Field(default=12, ge=1)
    mfa_required_roles: list[Role] = Field(default_factory=lambda: [Role.ADMIN])
    grants_only_roles: list[Role] = Field(
        default_factory=lambda: [Role.REFERRING_PHYSICIAN, Role.RESEARCHER],
        description="roles that see only studies explicitly granted to them",
    )
    access_rules: list[AccessRule] = Field(default_factory=list)
    break_glass_hours: float = Field(default=4.0, gt=0, le=72)
    dicom_aes: list[AeAccess] = Field(
        default_factory=list,
        description="calling AE titles allowed when require_auth is on, with their roles",
    )
    tls: TlsSettings = Field(default_factory=TlsSettings)
    oidc: OidcSettings = Field(default_factory=OidcSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    encryption: EncryptionSettings = Field(default_factory=EncryptionSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)


class Settings(BaseSettings):
    """Everything OpenVNA needs to know to start."""

    model_config = SettingsConfigDict(
        env_prefix="OPENVNA_", env_nested_delimiter="__", extra="forbid"
    )

    data_dir: Path = Path("var")
    host: str = "127.0.0.1"
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the index; default: SQLite file in the data dir",
    )
    stable_after: float = Field(
        default=60.0, ge=0, description="seconds of quiet before a study is stable"
    )
    sqlite_synchronous: str = Field(default="FULL", pattern="^(FULL|NORMAL|EXTRA)$")
    dimse: DimseSettings = Field(default_factory=DimseSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    ai: AiSettings = Field(default_factory=AiSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = _TOML_FILE.get("path")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    @property
    def index_url(self) -> str:
        """The index database URL, defaulting to a SQLite file under the data dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'index.sqlite').resolve()}"

    @property
    def storage_dir(self) -> Path:
        return self.data_dir / "storage"

    @property
    def models_dir(self) -> Path:
        """Folder scanned for model manifests (``<name>/manifest.toml``)."""
        return self.ai.models_dir if self.ai.models_dir is not None else self.data_dir / "models"

    @property
    def peers_file(self) -> Path:
        """Peers added at run time by ``openvna peers add`` (merged with ``dimse.peers``)."""
        return self.data_dir / "peers.json"


# Which TOML file the next Settings() reads: pydantic-settings asks the class, not the
# instance, for its sources, so ``load_settings`` sets this just for the one construction.
_TOML_FILE: dict[str, Path | None] = {"path": None}


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from defaults, ``config_file``, environment and ``overrides``.

    ``overrides`` with value ``None`` are ignored so that CLI options left unset do not
    mask the file or the environment. Dotted keys (``dimse.port``) set nested values.
    """
    if config_file is not None and not config_file.is_file():
        raise FileNotFoundError(f"configuration file not found: {config_file}")
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        target = nested
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    _TOML_FILE["path"] = config_file
    try:
        return _merge_nested(nested)
    finally:
        _TOML_FILE["path"] = None


def _merge_nested(nested: dict[str, Any]) -> Settings:
    """Construct Settings so nested CLI overrides merge with, not replace, file sections."""
    base = Settings()
    if not nested:
        return base
    merged = base.model_dump()
    _deep_update(merged, nested)
    return Settings.model_validate(merged)


def _deep_update(target: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value
