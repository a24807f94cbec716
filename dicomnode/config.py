"""Typed settings: a TOML file, then DICOMNODE_* environment variables, then CLI flags.

Every option is documented with its default in `dicomnode/node.example.toml`. Unknown keys are
errors (a typo must not silently fall back to a default), reported with the key's full path.
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from dicomnode.results.options import ResultOptions

EXAMPLE_CONFIG = Path(__file__).with_name("node.example.toml")
AE_TITLE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable, no backslash, 16 max


class ConfigError(Exception):
    """A configuration problem, with a message that names the bad key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _check_ae_title(value: str) -> str:
    value = value.strip()
    if not AE_TITLE_RE.match(value):
        raise ValueError(f"{value!r} is not a valid AE title (1-16 printable characters, no backslash)")
    return value


class NodeSettings(Strict):
    ae_title: str = "DICOMNODE"
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=1, le=65535)
    data_dir: Path = Path("./dicomnode-data")
    spool_dir: Path | None = None  # default <data_dir>/spool
    outbox_dir: Path | None = None  # default <data_dir>/outbox
    database_url: str | None = None  # default sqlite:///<data_dir>/audit.sqlite
    # below this much free space the node answers C-STORE with 0xA700 (out of resources)
    min_free_disk_mb: int = Field(1024, ge=0)
    max_associations: int = Field(16, ge=1)
    # the largest P-DATA PDU we accept; large PDUs cut per-PDU overhead (0 = unlimited)
    max_pdu_size: int = Field(0, ge=0)
    network_timeout_s: float = Field(60.0, gt=0)
    # a C-STORE whose data set is larger than this is refused (0xA700) without buffering the rest
    max_instance_mb: int = Field(1024, ge=1)
    # a TCP connection that sends no A-ASSOCIATE-RQ within this many seconds is closed and audited
    idle_connection_timeout_s: float = Field(5.0, gt=0)
    # a C-STORE request that announces a data set but sends none within this many seconds gets 0xC000
    dataset_timeout_s: float = Field(10.0, gt=0)

    _ae = field_validator("ae_title")(lambda cls, v: _check_ae_title(v))


class SecuritySettings(Strict):
    # empty list: any calling AE title is accepted
    allowed_calling_aes: list[str] = []
    # empty list: any host; entries are IP addresses or CIDR networks
    allowed_hosts: list[str] = []


class TlsSettings(Strict):
    enabled: bool = False
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    # a calling AE must present a certificate signed by ca_file
    require_client_cert: bool = True

    @model_validator(mode="after")
    def _files_named(self) -> "TlsSettings":
        if self.enabled:
            missing = [k for k in ("cert_file", "key_file") if getattr(self, k) is None]
            if self.require_client_cert and self.ca_file is None:
                missing.append("ca_file")
            if missing:
                raise ValueError(f"tls.enabled is true but {', '.join(missing)} not set")
        return self


class SeriesSettings(Strict):
    # a series is complete this long after the association that carried its last instance ended
    stable_seconds: float = Field(30.0, ge=0)
    # how often the completion checker looks
    poll_seconds: float = Field(1.0, gt=0)


class RouteMatch(Strict):
    modality: list[str] = []
    body_part: list[str] = []
    image_type_contains: list[str] = []
    series_description_regex: str | None = None
    min_slice_thickness_mm: float | None = None
    max_slice_thickness_mm: float | None = None
    min_slices: int | None = None
    max_slices: int | None = None
    calling_ae: list[str] = []

    @field_validator("series_description_regex")
    @classmethod
    def _regex_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {value!r}: {exc}") from exc
        return value


class Route(Strict):
    name: str
    pipeline: str = "lung-nodule"
    # destination names from [destinations], or "sender" for back to the calling AE
    destinations: list[str] = []
    match: RouteMatch = RouteMatch()
    # a PACS sends whole studies: analyse only the best matching series of each study
    one_series_per_study: bool = False


class Destination(Strict):
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    tls: bool = False
    _ae = field_validator("ae_title")(lambda cls, v: _check_ae_title(v))


class SenderSettings(Strict):
    # "sender" destinations answer on this port at the calling host unless a destination matches
    sender_port: int = Field(104, ge=1, le=65535)
    max_attempts: int = Field(8, ge=1)
    backoff_initial_s: float = Field(5.0, gt=0)
    backoff_max_s: float = Field(900.0, gt=0)
    poll_seconds: float = Field(1.0, gt=0)
    connect_timeout_s: float = Field(10.0, gt=0)


class JobSettings(Strict):
    workers: int = Field(1, ge=1)
    # a job that raised is retried this many times before it is failed
    max_attempts: int = Field(2, ge=1)
    poll_seconds: float = Field(0.5, gt=0)


class InferenceSettings(Strict):
    engine: Literal["auto", "torch", "onnxruntime", "tensorrt"] = "auto"
    mode: Literal["whole", "tiled"] = "whole"
    threads: int = Field(0, ge=0)  # 0: all cores
    weights: Path | None = None  # default: the packaged demo weights
    engine_cache_dir: Path | None = None  # default <data_dir>/engines


class WebSettings(Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    # users: {name = "pbkdf2_sha256$..."}; `dicomnode config hash-password` makes a hash
    users: dict[str, str] = {}
    api_tokens: list[str] = []
    session_secret: str | None = None
    # ask for a login even on a loopback address (a non-loopback host always asks)
    require_login: bool = False
    # /health is not ready while the spool has less free space than this
    min_free_disk_mb: int = Field(2048, ge=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DICOMNODE_", env_nested_delimiter="__", extra="forbid", validate_assignment=True
    )

    node: NodeSettings = NodeSettings()
    security: SecuritySettings = SecuritySettings()
    tls: TlsSettings = TlsSettings()
    series: SeriesSettings = SeriesSettings()
    # with no [[routes]] in the file, chest CT goes to the lung-nodule pipeline (one series per study)
    routes: list[Route] = [
        Route(name="chest-ct", pipeline="lung-nodule",
              match=RouteMatch(modality=["CT"], min_slices=16, max_slice_thickness_mm=3.0),
              one_series_per_study=True)
    ]
    destinations: dict[str, Destination] = {}
    sender: SenderSettings = SenderSettings()
    jobs: JobSettings = JobSettings()
    inference: InferenceSettings = InferenceSettings()
    results: ResultOptions = ResultOptions()
    web: WebSettings = WebSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # environment beats the file (passed as init kwargs); no .env or secrets files
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _routes_name_known_destinations(self) -> "Settings":
        for route in self.routes:
            for dest in route.destinations:
                if dest != "sender" and dest not in self.destinations:
                    raise ValueError(
                        f"route {route.name!r} names destination {dest!r}, which is not in [destinations]"
                    )
        return self

    # derived paths -------------------------------------------------------------
    @property
    def spool_dir(self) -> Path:
        return self.node.spool_dir or self.node.data_dir / "spool"

    @property
    def outbox_dir(self) -> Path:
        return self.node.outbox_dir or self.node.data_dir / "outbox"

    @property
    def database_url(self) -> str:
        if self.node.database_url:
            return self.node.database_url
        return f"sqlite:///{(self.node.data_dir / 'audit.sqlite').resolve()}"

    @property
    def engine_cache_dir(self) -> Path:
        return self.inference.engine_cache_dir or self.node.data_dir / "engines"


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (see {EXAMPLE_CONFIG.name} for the valid keys)")
        else:
            lines.append(f"  {key}: {err['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def load_settings(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Read the TOML file (if any), apply env and then CLI overrides ({"node.port": 11113})."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    try:
        settings = Settings(**data)
        for dotted, value in (overrides or {}).items():
            section, key = dotted.split(".", 1)
            setattr(getattr(settings, section), key, value)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None
    return settings
