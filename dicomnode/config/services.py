"""The settings of the node's work and services: jobs, inference, clinical reporting, retention, the web console, ATNA
audit export and priors."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from dicomnode.config.checks import USER_NAME_RE, Strict, absent_files, check_ae_title, check_host, check_path
from dicomnode.core.passwords import is_password_hash, is_token_hash, secret_weakness
from dicomnode.core.uids import printable


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
        absent = absent_files(self, ("ca_file", "cert_file", "key_file"))
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
