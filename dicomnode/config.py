"""Typed settings: a TOML file, then DICOMNODE_* environment variables, then CLI flags.

Every option is documented with its default in `dicomnode/node.example.toml`. Unknown keys are
errors (a typo must not silently fall back to a default), reported with the key's full path.
"""
from __future__ import annotations

import difflib
import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator,
                      model_validator)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from dicomnode.core.passwords import is_password_hash, is_token_hash, secret_weakness
from dicomnode.core.uids import printable  # an untrusted value quoted for one message line, bounded
from dicomnode.results.options import ResultOptions

EXAMPLE_CONFIG = Path(__file__).with_name("node.example.toml")
ENV_PREFIX = "DICOMNODE_"
# PS3.5 AE VR: the default repertoire without backslash and control characters, 16 at most
AE_TITLE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")
# a host name label (RFC 1123; "_" too, as Docker service names use it)
_HOST_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
# a CS value (modality, body part): letters, digits, space, underscore, 16 at most
_CODE_STRING_RE = re.compile(r"^[A-Za-z0-9 _]{1,16}$")
# a pipeline: the built-in name or "package.module:callable"
_PIPELINE_RE = re.compile(r"^(lung-nodule|[A-Za-z_][\w.]*:[A-Za-z_]\w*)$")
# a user name for the console: also a TOML key and an audit field
USER_NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class ConfigError(Exception):
    """A configuration problem, with a message that names the bad key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def check_ae_title(value: str) -> str:
    stripped = value.strip()  # leading and trailing spaces are not significant (PS3.5)
    if not stripped:
        raise ValueError("an AE title must not be empty or all spaces")
    if not AE_TITLE_RE.match(stripped):
        raise ValueError(f"{printable(value, 40)} is not a valid AE title (at most 16 characters, printable ASCII, "
                         "no backslash or control characters)")
    return stripped


_check_ae_title = check_ae_title  # the old name


def check_host(value: str) -> str:
    """An IP address or a host name (what a socket can bind to or connect to)."""
    host = value.strip()
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host.removesuffix(".")
    labels = name.split(".")
    if (name and len(name) <= 253 and all(_HOST_LABEL_RE.match(label) for label in labels)
            and not labels[-1].isdigit()):  # "10.0.0.300" is a bad address, not a host name
        return host
    raise ValueError(f"{printable(value, 40)} is not an IP address or a host name")


def check_network(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise ValueError(f"{printable(value, 40)} is not an IP address or a CIDR network (e.g. 10.0.0.0/8)") from None


def check_path(value: Path | None) -> Path | None:
    if value is not None and _CONTROL_RE.search(str(value)):
        raise ValueError(f"{printable(str(value), 40)} contains control characters")
    return value


_NODE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_node_id(value: str | None) -> str | None:
    if value is not None and not _NODE_ID_RE.fullmatch(value):
        raise ValueError(f"{printable(value, 40)} is not a node id (letters, digits, . _ -; starts with a letter "
                         "or digit; 64 at most)")
    return value


def check_database_url(value: str | None) -> str | None:
    """A URL SQLAlchemy can parse, for a dialect it knows. Never echoes the URL (it may hold a password)."""
    if value is None:
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(value)
    except (ArgumentError, ValueError):
        raise ValueError("is not a database URL (e.g. sqlite:////var/lib/dicomnode/audit.sqlite or "
                         "postgresql+psycopg://dicomnode@db/dicomnode)") from None
    try:
        url.get_dialect()
    except NoSuchModuleError:
        raise ValueError(f"names an unknown database dialect/driver {url.drivername!r}") from None
    return value


def redact_url(value: str) -> str:
    """A database URL with its password hidden, for output and logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(value).render_as_string(hide_password=True)
    except Exception:  # not parseable: show nothing of it
        return "(hidden)"


def check_code_string(value: str) -> str:
    if not _CODE_STRING_RE.match(value.strip()):
        raise ValueError(f"{printable(value, 40)} is not a DICOM code string (letters, digits, space, _; 16 at most)")
    return value.strip()


AETitle = Annotated[str, AfterValidator(check_ae_title)]
Network = Annotated[str, AfterValidator(check_network)]
CodeString = Annotated[str, AfterValidator(check_code_string)]


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
    # DICOM receiver processes on the node's one listening socket (connections spread by load); None: one per core, at most 4;
    # 1: the SCP runs in the node's own process, as before (dicomnode.receive.receivers)
    receive_processes: int | None = Field(None, ge=1, le=64)
    # several nodes on one database (PostgreSQL): this node's id in the `nodes` table and on the jobs
    # and deliveries it claims; None: "<host name>-<DICOM port>" (stable across restarts and
    # independent of the data directory, which the nodes share); letters, digits, . _ - (64 at most)
    node_id: str | None = None
    # the heartbeat renews this node's row and leases every heartbeat_s seconds; a job or delivery
    # whose lease is older than lease_s (its node stopped beating) is taken over by another node
    heartbeat_s: float = Field(5.0, gt=0)
    lease_s: float = Field(30.0, gt=0)

    _ae = field_validator("ae_title")(lambda cls, v: check_ae_title(v))
    _host = field_validator("host")(lambda cls, v: check_host(v))
    _paths = field_validator("data_dir", "spool_dir", "outbox_dir")(lambda cls, v: check_path(v))
    _db_url = field_validator("database_url")(lambda cls, v: check_database_url(v))
    _node_id = field_validator("node_id")(lambda cls, v: check_node_id(v))

    @model_validator(mode="after")
    def _lease_outlives_heartbeats(self) -> "NodeSettings":
        # a lease shorter than two heartbeats would expire under a live node between two renewals
        if self.lease_s < 2 * self.heartbeat_s:
            raise ValueError(f"node.lease_s ({self.lease_s:g}) must be at least twice node.heartbeat_s ({self.heartbeat_s:g})")
        return self

    def identity(self) -> str:
        """The node id: configured, or "<host name>-<port>" (host name cut to fit, made valid)."""
        if self.node_id is not None:
            return self.node_id
        host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()) or "node"
        return f"{host[:56]}-{self.port}"


class SecuritySettings(Strict):
    # empty list: any calling AE title is accepted
    allowed_calling_aes: list[AETitle] = []
    # empty list: any host; entries are IP addresses or CIDR networks
    allowed_hosts: list[Network] = []
    # the parsed allowed_hosts, so nothing downstream parses raw strings again
    _networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _parse_networks(self) -> "SecuritySettings":
        self._networks = [ipaddress.ip_network(h) for h in self.allowed_hosts]
        return self

    @property
    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return list(self._networks)


class TlsSettings(Strict):
    enabled: bool = False
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    # a calling AE must present a certificate signed by ca_file
    require_client_cert: bool = True
    _paths = field_validator("cert_file", "key_file", "ca_file")(lambda cls, v: check_path(v))

    @model_validator(mode="after")
    def _files_named(self) -> "TlsSettings":
        if self.enabled:
            missing = [k for k in ("cert_file", "key_file") if getattr(self, k) is None]
            if self.require_client_cert and self.ca_file is None:
                missing.append("ca_file")
            if missing:
                raise ValueError(f"tls.enabled is true but {', '.join(missing)} not set")
            # config check must catch a wrong path, not the first TLS association
            absent = [f"{k} ({path})" for k in ("cert_file", "key_file", "ca_file")
                      if (path := getattr(self, k)) is not None and not Path(path).is_file()]
            if absent:
                raise ValueError(f"tls.enabled is true but these files do not exist: {', '.join(absent)}")
        return self


class SeriesSettings(Strict):
    # a series is complete this long after the association that carried its last instance ended
    stable_seconds: float = Field(30.0, ge=0)
    # ... or this long after that association's A-RELEASE when its instances show a whole series
    # (contiguous evenly spaced slices, or one multi-frame instance; dicomnode.receive.geometry)
    evidence_grace_seconds: float = Field(1.5, ge=0)
    # how often the completion checker looks
    poll_seconds: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _grace_within_timer(self) -> SeriesSettings:
        # the default may exceed a short stable_seconds (tests, demos): then the timer comes first anyway
        if "evidence_grace_seconds" in self.model_fields_set and self.evidence_grace_seconds > self.stable_seconds:
            raise ValueError(f"evidence_grace_seconds ({self.evidence_grace_seconds:g}) must not be longer than "
                             f"stable_seconds ({self.stable_seconds:g}): the evidence path is the short one")
        return self


class RouteMatch(Strict):
    modality: list[CodeString] = []
    body_part: list[CodeString] = []
    image_type_contains: list[str] = []
    series_description_regex: str | None = None
    min_slice_thickness_mm: float | None = None
    max_slice_thickness_mm: float | None = None
    min_slices: int | None = None
    max_slices: int | None = None
    calling_ae: list[AETitle] = []

    @field_validator("series_description_regex")
    @classmethod
    def _regex_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {printable(value, 40)}: {exc}") from None
        return value


class Route(Strict):
    name: str
    pipeline: str = "lung-nodule"
    # destination names from [destinations], or "sender" for back to the calling AE
    destinations: list[str] = []
    match: RouteMatch = RouteMatch()
    # a PACS sends whole studies: analyse only the best matching series of each study
    one_series_per_study: bool = False
    # destination names from [destinations] that also get the source instances themselves, as
    # received, once a matching series is complete (whatever the analysis does)
    forward_to: list[str] = []

    @field_validator("pipeline")
    @classmethod
    def _pipeline_named(cls, value: str) -> str:
        if not _PIPELINE_RE.match(value):
            raise ValueError(f"{printable(value, 40)} is neither \"lung-nodule\" nor \"package.module:callable\"")
        return value


DICOMWEB_AE = "DICOMWEB"  # the ae_title a dicomweb destination's delivery rows carry (no AE is called)
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def check_dicomweb_url(value: str) -> str:
    """A DICOMweb base URL: http or https, a host, no credentials, query or fragment; no trailing slash."""
    from urllib.parse import urlsplit

    text = value.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018  # raises on a port out of range
    except ValueError as exc:
        raise ValueError(f"{printable(value, 80)} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{printable(value, 80)}: a DICOMweb url must start with http:// or https://")
    if parts.username is not None or parts.password is not None:
        # a secret in the URL ends up in logs and audit rows: it belongs in auth_header_env/auth_header_file
        raise ValueError("a DICOMweb url must not carry credentials (user:password@); "
                         "use auth_header_env or auth_header_file")
    if not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"{printable(value, 80)}: a DICOMweb url needs a host and no ?query or #fragment")
    check_host(parts.hostname)
    return text.rstrip("/")


class Destination(Strict):
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    tls: bool = False
    # "dimse": C-STORE to ae_title@host:port; "dicomweb": STOW-RS to url (ae_title, host, port then
    # come from the url and need not be given)
    type: Literal["dimse", "dicomweb"] = "dimse"
    # dicomweb: the server's DICOMweb base URL, http or https, without credentials; results are POSTed
    # to <url>/studies (e.g. "https://pacs.example.org/dicom-web")
    url: str | None = None
    # dicomweb: the name of an environment variable holding the whole Authorization header value
    # (e.g. "Bearer eyJ..."); the value is read at each send and never logged
    auth_header_env: str | None = None
    # dicomweb: or a file holding that value (first line); read at each send
    auth_header_file: Path | None = None
    # ask for storage commitment after each delivery (N-ACTION, Storage Commitment Push Model): a
    # delivery is "committed" only once the destination's N-EVENT-REPORT confirms it; else retried
    storage_commitment: bool = False
    _ae = field_validator("ae_title")(lambda cls, v: check_ae_title(v))
    _host = field_validator("host")(lambda cls, v: check_host(v))
    _url = field_validator("url")(lambda cls, v: check_dicomweb_url(v) if v is not None else None)
    _auth_file = field_validator("auth_header_file")(lambda cls, v: check_path(v))

    @model_validator(mode="before")
    @classmethod
    def _address_from_url(cls, data: Any) -> Any:
        """A dicomweb destination's host and port are its URL's (the delivery rows record them)."""
        if not isinstance(data, dict) or data.get("type") != "dicomweb":
            return data
        url = data.get("url")
        if not isinstance(url, str):
            raise ValueError("a destination with type = \"dicomweb\" needs url (its DICOMweb base URL)")
        from urllib.parse import urlsplit

        parts = urlsplit(url.strip())
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            port = 80  # the url validator names what is wrong
        return {"ae_title": DICOMWEB_AE, "host": parts.hostname or "localhost", "port": port,
                "tls": parts.scheme == "https", **data}

    @model_validator(mode="after")
    def _dicomweb_keys(self) -> "Destination":
        web_keys = [k for k in ("url", "auth_header_env", "auth_header_file") if getattr(self, k) is not None]
        if self.type == "dimse" and web_keys:
            raise ValueError(f"{', '.join(web_keys)}: only for a destination with type = \"dicomweb\"")
        if self.type == "dicomweb" and self.storage_commitment:
            # storage commitment is a DIMSE service; a STOW-RS answer already says what was stored
            raise ValueError("storage_commitment: only for a DIMSE destination (type = \"dimse\")")
        if self.auth_header_env is not None and self.auth_header_file is not None:
            raise ValueError("give auth_header_env or auth_header_file, not both")
        if self.auth_header_env is not None and not _ENV_NAME_RE.match(self.auth_header_env):
            raise ValueError(f"auth_header_env {printable(self.auth_header_env, 40)} is not an environment variable name")
        return self


class SenderSettings(Strict):
    # "sender" destinations answer on this port at the calling host unless a destination matches
    sender_port: int = Field(104, ge=1, le=65535)
    max_attempts: int = Field(8, ge=1)
    backoff_initial_s: float = Field(5.0, gt=0)
    backoff_max_s: float = Field(900.0, gt=0)
    poll_seconds: float = Field(1.0, gt=0)
    connect_timeout_s: float = Field(10.0, gt=0)
    # storage commitment: a transaction whose N-EVENT-REPORT has not come this long after the
    # N-ACTION is failed, and its deliveries retried with the backoff above
    commitment_timeout_s: float = Field(600.0, gt=0)
    # how long the association stays open after the N-ACTION response for a report on it (0: release
    # at once); a PACS that reports later opens a new association to the node instead
    commitment_linger_s: float = Field(1.0, ge=0)


class JobSettings(Strict):
    workers: int = Field(1, ge=1)
    # tries of a job in all: attempts that raised and attempts its node died in (kill -9, OOM), then failed
    max_attempts: int = Field(2, ge=1)
    poll_seconds: float = Field(0.5, gt=0)


class InferenceSettings(Strict):
    engine: Literal["auto", "torch", "onnxruntime", "tensorrt", "triton"] = "auto"
    mode: Literal["whole", "tiled"] = "whole"
    threads: int = Field(0, ge=0)  # 0: all cores
    # MB the onnxruntime detector's full-resolution layers may use: they run in z-slabs of that size (same
    # output as one pass); 0 runs the whole graph in one pass (about 4.5 GB more for a chest CT)
    detector_memory_mb: int = Field(512, ge=0)
    weights: Path | None = None  # default: the packaged demo weights
    engine_cache_dir: Path | None = None  # default <data_dir>/engines
    # engine "triton": the Triton Inference Server, http://host:port or grpc://host:port
    triton_url: str | None = None
    # one request to Triton (a whole-volume detector pass on a busy CPU server takes a while)
    triton_timeout_s: float = Field(300.0, gt=0)
    # opening the connection; refused or timed out: the job waits and retries (not failed)
    triton_connect_timeout_s: float = Field(5.0, gt=0)
    # the server's models are <prefix>-detector and <prefix>-classifier (dicomnode model export-triton)
    triton_model_prefix: str = Field("dicomnode", min_length=1)
    # a job whose inference server is unreachable is retried after this many seconds, doubled each
    # time up to retry_max_s; these waits are not attempts (jobs.max_attempts)
    unreachable_retry_s: float = Field(2.0, gt=0)
    unreachable_retry_max_s: float = Field(60.0, gt=0)
    _paths = field_validator("weights", "engine_cache_dir")(lambda cls, v: check_path(v))

    @field_validator("triton_url")
    @classmethod
    def _triton_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from inference.remote_engine import parse_triton_url  # no torch: config stays light

        parse_triton_url(v)  # ValueError naming what is wrong
        return v.rstrip("/")

    @model_validator(mode="after")
    def _triton_needs_url(self) -> "InferenceSettings":
        if self.engine == "triton" and not self.triton_url:
            raise ValueError('engine = "triton" needs triton_url (http://host:port or grpc://host:port)')
        return self


class ClinicalSettings(Strict):
    """Inputs of the Brock (PanCan) risk that are not in the image or the DICOM header."""

    # lung cancer in a first-degree relative, for every patient of this node: not in DICOM; "unknown"
    # is computed as "no" and reported as unknown
    family_history: Literal["unknown", "yes", "no"] = "unknown"
    # LAA-950 (% of lung below -950 HU) from which Brock's emphysema input is yes: COPDGene's definition of
    # CT emphysema, >= 5 % (Amaza et al., Int J Chron Obstruct Pulmon Dis 2021;16:1231-1242)
    emphysema_laa950_pct: float = Field(5.0, ge=0, le=100)
    # the most lesions over the detection threshold reported per series, most probable first (inference.detect
    # MAX_FINDINGS); the exam says how many more there were
    max_findings: int = Field(10, ge=1, le=100)


class RetentionSettings(Strict):
    """What the node may delete, and when (dicomnode.retention). Only files of series that are
    finished (analysed and every delivery sent, or ignored / not selected) ever go; audit rows stay."""

    # run the policy in the node, every interval_seconds; `dicomnode retention` runs it on demand
    enabled: bool = True
    interval_seconds: float = Field(3600.0, gt=0)
    # keep received instances this many days after the series was delivered, ignored or not selected
    source_days: float = Field(30.0, ge=0)
    # keep results (and anything else in the outbox) this many days after they were sent
    results_days: float = Field(30.0, ge=0)
    # percent used of the data directory's filesystem above which the oldest deletable series go
    # first, whatever their age, until use is below low_water_percent
    high_water_percent: float = Field(90.0, ge=1, le=99)
    low_water_percent: float = Field(80.0, ge=1, le=99)
    # spool + outbox above this many GiB counts as full (the same high/low percents apply); 0 = no cap
    max_spool_gb: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _low_below_high(self) -> "RetentionSettings":
        if self.low_water_percent >= self.high_water_percent:
            raise ValueError(f"retention.low_water_percent ({self.low_water_percent:g}) must be below "
                             f"retention.high_water_percent ({self.high_water_percent:g})")
        return self


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
    # a logged-in session ends after this long without a request (and always after 12 h)
    session_idle_minutes: int = Field(30, ge=1, le=720)
    # Host header names the console answers to (DNS rebinding guard); empty: the loopback names and
    # web.host. Checked always when login is off, and whenever the list is set.
    allowed_hostnames: list[str] = []
    # HTTPS in uvicorn: both files (PEM) or neither; session cookies then get the Secure flag
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # Secure cookies without tls_*: for a TLS-terminating reverse proxy in front of the console
    secure_cookies: bool = False
    # request bodies: uploads (/upload, /api/upload) may be this large, every other request far less
    max_upload_mb: int = Field(4096, ge=1)
    max_request_kb: int = Field(1024, ge=1)
    # zip uploads, checked from the zip directory before any member is read and again while reading
    max_zip_uncompressed_mb: int = Field(8192, ge=1)
    max_zip_members: int = Field(5000, ge=1)
    max_zip_ratio: int = Field(100, ge=1)  # uncompressed / compressed, for members over 1 MB
    # failed logins before an exponential delay starts: per client address, and per user name
    login_client_failures: int = Field(5, ge=1)
    login_user_failures: int = Field(10, ge=1)
    # the longest delay a throttled client or user is made to wait
    login_max_delay_s: int = Field(900, ge=1)
    # the dashboard and /metrics flag a destination whose oldest pending delivery waits longer than this
    destination_warn_pending_s: int = Field(600, ge=1)
    # the dashboard reloads its figures in the background this often (no page reload)
    dashboard_refresh_s: int = Field(5, ge=1, le=3600)

    @model_validator(mode="after")
    def _tls_pair(self) -> "WebSettings":
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("web.tls_cert_file and web.tls_key_file go together: set both or neither")
        return self

    _host = field_validator("host")(lambda cls, v: check_host(v))

    @field_validator("users")
    @classmethod
    def _users_are_hashed(cls, users: dict[str, str]) -> dict[str, str]:
        for name, encoded in users.items():
            if not USER_NAME_RE.match(name):
                raise ValueError(f"user name {printable(name, 40)} may hold only letters, digits and . _ @ - (64 at most)")
            if not is_password_hash(encoded):  # the value is probably a password: never echo it
                raise ValueError(f"the value for user {name!r} is not a password hash (plain-text passwords are "
                                 f"refused); make one with `dicomnode user add {name} --config FILE`")
        return users

    @field_validator("api_tokens")
    @classmethod
    def _tokens_are_strong(cls, tokens: list[str]) -> list[str]:
        for i, token in enumerate(tokens):
            weakness = None if is_token_hash(token) else secret_weakness(token)
            if weakness:
                raise ValueError(f"token [{i}] {weakness}; make one with `dicomnode token create --config FILE`")
        return tokens

    @field_validator("session_secret")
    @classmethod
    def _session_secret_is_strong(cls, secret: str | None) -> str | None:
        weakness = secret_weakness(secret) if secret is not None else None
        if weakness:
            raise ValueError(f"the session secret {weakness} (e.g. python -c 'import secrets; "
                             "print(secrets.token_urlsafe(32))'), or leave it unset")
        return secret



class AtnaSettings(Strict):
    """IHE ATNA Record Audit Event (dicomnode.atna): the audit trail as DICOM PS3.15 A.5 audit
    messages over syslog to the hospital's audit repository. The events table is the queue."""

    # off by default: a hospital names its repository first
    enabled: bool = False
    # the audit repository (Audit Record Repository, ARR)
    host: str | None = None
    # 6514 is syslog over TLS (RFC 5425); plain syslog listens on 514 (TCP or UDP)
    port: int = Field(6514, ge=1, le=65535)
    # tls: RFC 5425 (the IHE ATNA default); tcp: the same octet-counted frames without TLS; udp: RFC 5426
    # (lossy: no acknowledgement, a datagram may vanish; for repositories that take nothing else)
    transport: Literal["tls", "tcp", "udp"] = "tls"
    # tls: the CA that signed the repository's certificate; cert_file/key_file: the node's client
    # certificate where the repository asks for one (IHE ATNA: mutual authentication)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    # AuditSourceID of every message; empty: the node's AE title
    audit_source_id: str = ""
    # AuditEnterpriseSiteID (the hospital or site); empty: left out
    enterprise_site_id: str = ""
    # how often the exporter looks for new audit events
    poll_seconds: float = Field(1.0, gt=0)
    # while the repository is down: first wait, doubled on each failure up to backoff_max_s
    backoff_initial_s: float = Field(2.0, gt=0)
    backoff_max_s: float = Field(120.0, gt=0)
    connect_timeout_s: float = Field(10.0, gt=0)
    # events handled per pass (one connection, one commit of the cursor)
    batch_size: int = Field(200, ge=1, le=10000)
    _paths = field_validator("ca_file", "cert_file", "key_file")(lambda cls, v: check_path(v))

    @model_validator(mode="after")
    def _complete_when_enabled(self) -> "AtnaSettings":
        if not self.enabled:
            return self
        if not self.host:
            raise ValueError("atna.enabled is true but atna.host (the audit repository) is not set")
        check_host(self.host)
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("atna.cert_file and atna.key_file go together: set both or neither")
        if self.transport == "tls" and self.ca_file is None:
            raise ValueError("atna.transport is tls but atna.ca_file (the CA of the repository's certificate) is not set")
        absent = [f"{k} ({path})" for k in ("ca_file", "cert_file", "key_file")
                  if (path := getattr(self, k)) is not None and not Path(path).is_file()]
        if absent:
            raise ValueError(f"atna.enabled is true but these files do not exist: {', '.join(absent)}")
        return self

class PriorPeer(Strict):
    """A query/retrieve SCP (a PACS) the node may ask for a patient's prior exams."""

    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    # TLS with the node's [tls] client settings (as for destinations)
    tls: bool = False
    _ae = field_validator("ae_title")(lambda cls, v: check_ae_title(v))
    _host = field_validator("host")(lambda cls, v: check_host(v))


class PriorsSettings(Strict):
    """Priors for follow-up comparison (dicomnode.priors, issue 12): the patient's most recent earlier
    chest CT, from the node's own audit database first, then by C-FIND/C-MOVE or C-GET from a peer."""

    # off by default: every exam is analysed alone
    enabled: bool = False
    # how far back a prior may be, in years before the current StudyDate
    lookback_years: float = Field(3.0, gt=0, le=50)
    # the query/retrieve SCPs asked by C-FIND, in this order; empty: only the node's own database
    peers: list[PriorPeer] = []
    # the AE title (from peers) the prior is retrieved from; empty: the peer whose C-FIND found it
    retrieve_from: str = ""
    # c-move: the peer sends the prior to the node's own AE title on the node's port (the PACS must
    # know the node as a destination); c-get: the instances come back on the node's own association
    method: Literal["c-move", "c-get"] = "c-move"
    # seconds for one C-FIND (association, each response) and for a whole retrieval
    query_timeout_s: float = Field(20.0, gt=0, le=3600)
    retrieve_timeout_s: float = Field(300.0, gt=0, le=86400)
    # the most a follow-up waits for its prior (search and retrieval together) before it is analysed
    # and delivered without comparison ("prior not available: ...")
    max_wait_s: float = Field(600.0, gt=0, le=86400)

    @model_validator(mode="after")
    def _retrieve_from_is_a_peer(self) -> "PriorsSettings":
        names = [p.ae_title for p in self.peers]
        if self.retrieve_from:
            self.__dict__["retrieve_from"] = check_ae_title(self.retrieve_from)
            if self.retrieve_from not in names:
                raise ValueError(f"priors.retrieve_from {self.retrieve_from!r} is not the ae_title of one of "
                                 f"priors.peers (known: {', '.join(names) or 'none'})")
        if len(set(names)) != len(names):
            raise ValueError("priors.peers: each peer needs its own ae_title")
        return self


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
    clinical: ClinicalSettings = ClinicalSettings()
    results: ResultOptions = ResultOptions()
    retention: RetentionSettings = RetentionSettings()
    web: WebSettings = WebSettings()
    atna: AtnaSettings = AtnaSettings()
    priors: PriorsSettings = PriorsSettings()

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
            for dest in route.forward_to:  # "sender" is refused: the images would go back where they came from
                if dest not in self.destinations:
                    raise ValueError(f"route {route.name!r} forward_to names destination {dest!r}, which is not in "
                                     f"[destinations] (known: {', '.join(sorted(self.destinations)) or 'none'})")
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


# -- loading, with errors that say where a bad value came from ---------------------------------
def _key(loc: tuple[int | str, ...]) -> str:
    """("security", "allowed_hosts", 0) -> "security.allowed_hosts[0]"."""
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key or "(top level)"


def _env_vars() -> dict[tuple[str, ...], str]:
    """DICOMNODE_* variables by the settings path they set: ("node", "port") -> "DICOMNODE_NODE__PORT"."""
    found: dict[tuple[str, ...], str] = {}
    for name in os.environ:
        if name.upper().startswith(ENV_PREFIX):
            found[tuple(name[len(ENV_PREFIX):].lower().split("__"))] = name
    return found


def _source_of(loc: tuple[int | str, ...], file: Path | None) -> str:
    """The environment variable that set this key, a section above it or a key below it (an error on
    `routes` can come from DICOMNODE_ROUTES__0__NAME), else the file, else the defaults."""
    path = tuple(str(p).lower() for p in loc)
    for env_path, name in _env_vars().items():
        common = min(len(path), len(env_path))
        if path[:common] == env_path[:common]:
            return f"environment variable {name}"
    return f"config file {file}" if file is not None else "the built-in defaults"


# -- the names of every setting, for "did you mean" and for unknown environment variables -------------
def _model_of(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def setting_keys(model: type[BaseModel] | None = None, prefix: str = "") -> list[str]:
    """Every dotted key a config file may set ("node.port", "routes.match.min_slices", ...)."""
    keys: list[str] = []
    for name, field in (model or Settings).model_fields.items():
        dotted = f"{prefix}.{name}" if prefix else name
        keys.append(dotted)
        nested = _model_of(field.annotation)
        if model is None and name == "routes":
            nested = Route
        elif model is None and name == "destinations":
            nested, dotted = Destination, "destinations.NAME"
        if nested is not None:
            keys += setting_keys(nested, dotted)
    return keys


def nearest_key(key: str) -> str | None:
    """The valid key closest to a misspelt one (same section first), or None."""
    keys = setting_keys()
    section = key.rsplit(".", 1)[0] if "." in key else ""
    same = [k for k in keys if k.rsplit(".", 1)[0] == section] if section else [k for k in keys if "." not in k]
    for pool in (same, keys):
        match = difflib.get_close_matches(key, pool, n=1, cutoff=0.6)
        if match:
            return match[0]
    return None


def _env_name(key: str) -> str:
    return ENV_PREFIX + key.upper().replace(".", "__")


# settings whose values are tables the admin names (any name below them is fine)
_OPEN_ENV_PREFIXES = ("DICOMNODE_DESTINATIONS__", "DICOMNODE_WEB__USERS__", "DICOMNODE_ROUTES__")


def unknown_env_vars(environ: Mapping[str, str] | None = None) -> list[str]:
    """One warning per DICOMNODE_* variable that sets nothing (pydantic-settings ignores them silently),
    naming the variable and the nearest valid one."""
    valid = {_env_name(k) for k in setting_keys() if "NAME" not in k}
    warnings = []
    for name in sorted(environ if environ is not None else os.environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in valid or upper.startswith(_OPEN_ENV_PREFIXES):
            continue
        near = difflib.get_close_matches(upper, sorted(valid), n=1, cutoff=0.8)
        hint = f"; did you mean {near[0]}?" if near else " (see `dicomnode config example` for the keys)"
        warnings.append(f"environment variable {name} is not a dicomnode setting and is ignored{hint} "
                        f"(DICOMNODE_<SECTION>__<KEY>, two underscores between section and key)")
    return warnings


def _error_lines(exc: ValidationError, prefix: tuple[str, ...], source: Any) -> list[str]:
    """One line per problem: key, where its value came from, what is wrong (never the value of a secret)."""
    lines = []
    for err in exc.errors():
        loc = prefix + tuple(err["loc"])
        where = source(loc) if callable(source) else source
        if err["type"] == "extra_forbidden":
            near = nearest_key(re.sub(r"\[\d+\]", "", _key(loc)))
            why = "unknown key" + (f"; did you mean {near}?" if near else "") + \
                " (`dicomnode config example` shows every valid key)"
        else:
            why = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {_key(loc)}: {why} (from {where})")
    return lines


def _read_file(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None


def load_settings(path: Path | None = None, overrides: dict[str, Any] | None = None,
                  flags: Mapping[str, str] | None = None) -> Settings:
    """Read the TOML file (if any), apply env and then CLI overrides ({"node.port": 11113}).

    `flags` names the command-line flag behind each override ({"node.port": "--port"}), so that an
    error blames the flag, not the file; every error names the key and where its value came from.
    """
    data = _read_file(path) if path is not None else {}
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        lines = _error_lines(exc, (), lambda loc: _source_of(loc, path))
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None
    except SettingsError:
        names = ", ".join(sorted(_env_vars().values())) or "DICOMNODE_*"
        raise ConfigError(f"invalid configuration: an environment variable is not valid JSON for its key "
                          f"(one of {names}); lists and tables are written as JSON, e.g. '[\"10.0.0.0/8\"]'") from None
    problems: list[str] = []
    for dotted, value in (overrides or {}).items():
        section, key = dotted.split(".", 1)
        try:
            setattr(getattr(settings, section), key, value)
        except ValidationError as exc:
            problems += _error_lines(exc, (section,), (flags or {}).get(dotted, f"the override {dotted}"))
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(problems))
    return settings


# -- what `config check` and `serve` say about a valid configuration ------------------------------
def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def security_warnings(settings: Settings) -> list[str]:
    """Valid but risky settings, said loudly at start-up and by `config check`."""
    warnings = []
    node, security = settings.node, settings.security
    if not is_loopback_host(node.host) and not security.allowed_calling_aes and not security.allowed_hosts:
        warnings.append(
            f"the DICOM port {node.port} listens on {node.host} and accepts ANY calling AE from ANY host: "
            "set security.allowed_calling_aes and/or security.allowed_hosts "
            "(e.g. DICOMNODE_SECURITY__ALLOWED_HOSTS='[\"10.1.2.3\"]')")
    plain = [i for i, t in enumerate(settings.web.api_tokens) if not is_token_hash(t)]
    if plain:
        warnings.append(
            f"web.api_tokens {', '.join(f'[{i}]' for i in plain)} stored in PLAIN TEXT: anyone who reads the config "
            "can use them; replace each with a hash (`dicomnode token create --config FILE`)")
    return warnings


def redacted_dump(settings: Settings) -> dict[str, Any]:
    """The settings as JSON data with every secret hidden (for `config check`)."""
    data = settings.model_dump(mode="json")
    web = data["web"]
    web["users"] = {name: "(password hash hidden)" for name in web["users"]}
    web["api_tokens"] = ["(hash hidden)" if is_token_hash(t) else "(plain-text token hidden)"
                         for t in settings.web.api_tokens]
    if web["session_secret"] is not None:
        web["session_secret"] = "(hidden)"
    if data["node"]["database_url"] is not None:
        data["node"]["database_url"] = redact_url(data["node"]["database_url"])
    return data
