"""The settings of what the node exchanges DICOM with: its own AE and port, who may associate, TLS, when a series is
complete, routes, destinations and the sender."""
from __future__ import annotations

import ipaddress
import re
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from dicomnode.config.checks import (
    AETitle,
    CodeString,
    Network,
    PIPELINE_RE,
    Strict,
    absent_files,
    check_ae_title,
    check_database_url,
    check_host,
    check_node_id,
    check_path,
)
from dicomnode.core.uids import printable


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
            absent = absent_files(self, ("cert_file", "key_file", "ca_file"))
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
        if not PIPELINE_RE.match(value):
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
