"""A real Orthanc PACS for tests, a real peer rather than a mock: Debian's `Orthanc` in a temp dir.

    with OrthancProcess(tmp_path / "orthanc", modalities={"NODE": ["DICOMNODE", "127.0.0.1", 11112]}) as pacs:
        pacs.upload(path)
        study = pacs.lookup_study(study_instance_uid)
        pacs.store_to_modality("NODE", [study])

Only the standard library is used, so the helper works in any test without extra packages.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ORTHANC_BINARY = "Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
APT_HINT = "apt-get install -y orthanc orthanc-dicomweb"


class OrthancError(RuntimeError):
    """Orthanc failed to start or a REST call failed; the message carries Orthanc's answer/log tail."""


# Orthanc 1.10's FilesystemStorage::Create checks whether a file's hash directory (storage/ab/cd) exists and then
# creates it; when a concurrent upload creates it in between, boost's create_directories() returns false and the
# upload fails with HTTP 500 and this message (seen once in CI, uploads on 4 threads into a fresh storage). The
# directory exists afterwards, so the same upload, sent again, is stored.
STORAGE_DIRECTORY_RACE = "Unable to create a subdirectory or a file in the file storage"
UPLOAD_ATTEMPTS = 3


class _PortBusy(OrthancError):
    """Orthanc exited while starting (most often: a port was taken)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def orthanc_binary() -> str | None:
    return shutil.which(ORTHANC_BINARY) or (("/usr/sbin/" + ORTHANC_BINARY) if Path("/usr/sbin/Orthanc").exists() else None)


class OrthancProcess:
    """Debian Orthanc on free DICOM and HTTP ports, with its own config and storage under `workdir`.

    `modalities`: Orthanc's "DicomModalities" ({"NODE": ["DICOMNODE", "127.0.0.1", 11112]}).
    `dicomweb`: load the DICOMweb plugin at `/dicom-web/` with Full study/series metadata.
    `config`: extra top-level settings merged last (they win). `verbose`: Orthanc's --verbose log.
    The log goes to `workdir/orthanc.log` (`log_tail()` for failure messages).
    TCP_NODELAY=1 is put in Orthanc's environment.
    """

    def __init__(
        self,
        workdir: str | Path,
        *,
        aet: str = "ORTHANC",
        modalities: Mapping[str, Sequence[Any]] | None = None,
        dicomweb: bool = True,
        http_port: int | None = None,
        dicom_port: int | None = None,
        config: Mapping[str, Any] | None = None,
        verbose: bool = False,
    ) -> None:
        self.workdir = Path(workdir)
        self.aet = aet
        self.modalities = {name: list(value) for name, value in (modalities or {}).items()}
        self.dicomweb = dicomweb
        self.http_port = http_port or free_port()
        self.dicom_port = dicom_port or free_port()
        self._auto_ports = http_port is None and dicom_port is None
        self.extra_config = dict(config or {})
        self.verbose = verbose
        # unique, so start() knows the answer on the HTTP port comes from this process
        self.name = f"test-{aet}-{uuid.uuid4().hex[:12]}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "orthanc.log"
        self.config_path = self.workdir / "orthanc.json"

    # ---------------------------------------------------------------- lifecycle

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.base_url}/dicom-web"

    def build_config(self) -> dict[str, Any]:
        storage = self.workdir / "storage"
        config: dict[str, Any] = {
            "Name": self.name,
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "StorageCompression": False,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpCompressionEnabled": False,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomModalities": self.modalities,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "UnknownSopClassAccepted": True,
            "ConcurrentJobs": 2,
            "HttpThreadsCount": 20,
            "StableAge": 2,
            "SaveJobs": False,
            "Plugins": [str(DICOMWEB_PLUGIN)] if self.dicomweb else [],
        }
        if self.dicomweb:
            config["DicomWeb"] = {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": True,
                "WadoRoot": "/wado",
                "StudiesMetadata": "Full",
                "SeriesMetadata": "Full",
            }
        config.update(self.extra_config)
        return config

    def start(self, timeout: float = 30.0) -> OrthancProcess:
        """Write the config, launch Orthanc, and return once GET /system (and DICOMweb) answers.

        With ports picked automatically, a port taken meanwhile by someone else is retried with
        fresh ports (twice); otherwise raises OrthancError carrying the tail of Orthanc's log.
        """
        for attempt in range(3):
            try:
                return self._launch(timeout)
            except _PortBusy:
                if not self._auto_ports or attempt == 2:
                    raise
                self.http_port, self.dicom_port = free_port(), free_port()
        raise AssertionError("unreachable")

    def _launch(self, timeout: float) -> OrthancProcess:
        binary = orthanc_binary()
        if binary is None:
            raise OrthancError(f"Orthanc is not installed ({APT_HINT})")
        if self.dicomweb and not DICOMWEB_PLUGIN.exists():
            raise OrthancError(f"the DICOMweb plugin {DICOMWEB_PLUGIN} is missing ({APT_HINT})")
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "storage").mkdir(exist_ok=True)
        self.config_path.write_text(json.dumps(self.build_config(), indent=2))
        env = dict(os.environ, TCP_NODELAY="1")
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                [binary, *(["--verbose"] if self.verbose else []), str(self.config_path)],
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code, self.process = self.process.returncode, None
                raise _PortBusy(f"Orthanc exited with {code}:\n{self.log_tail()}")
            try:
                if self.get("/system", timeout=2.0).get("Name") != self.name:
                    raise OrthancError(f"another server answers on HTTP port {self.http_port}")
                if self.dicomweb:
                    self.get("/dicom-web/studies", timeout=2.0)
                return self
            except (OSError, OrthancError):
                time.sleep(0.1)
        self.stop()
        raise OrthancError(f"Orthanc did not answer on {self.base_url} within {timeout:g} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate Orthanc (SIGTERM, then SIGKILL); safe to call twice."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def cleanup(self) -> None:
        """Stop and remove the storage directory (keeps the config and log for post-mortems)."""
        self.stop()
        shutil.rmtree(self.workdir / "storage", ignore_errors=True)

    def __enter__(self) -> OrthancProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # ---------------------------------------------------------------- raw REST

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        content_type: str | None = None,
        accept: str | None = None,
        timeout: float = 60.0,
    ) -> bytes:
        """One HTTP call to Orthanc; raises OrthancError with the answer on a non-2xx status."""
        req = urllib.request.Request(self.base_url + path, data=body, method=method)
        if content_type:
            req.add_header("Content-Type", content_type)
        if accept:
            req.add_header("Accept", accept)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:2000]
            raise OrthancError(f"{method} {path} -> HTTP {err.code}: {detail}") from None

    def get(self, path: str, timeout: float = 60.0) -> Any:
        """GET returning parsed JSON."""
        return json.loads(self.request("GET", path, timeout=timeout) or b"null")

    def post(self, path: str, payload: Any = None, timeout: float = 60.0) -> Any:
        """POST a JSON body (or a plain string, sent as is) returning parsed JSON."""
        body = payload.encode() if isinstance(payload, str) else json.dumps(payload if payload is not None else {}).encode()
        return json.loads(self.request("POST", path, body, content_type="application/json", timeout=timeout) or b"null")

    def delete(self, path: str) -> None:
        self.request("DELETE", path)

    # ---------------------------------------------------------------- uploads and listing

    def upload(self, source: str | Path | bytes) -> dict[str, Any]:
        """POST /instances one DICOM file (path or bytes); returns Orthanc's answer (ID, ParentStudy, Status...)."""
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        for attempt in range(UPLOAD_ATTEMPTS):
            try:
                answer = json.loads(self.request("POST", "/instances", data, content_type="application/dicom"))
                break
            except OrthancError as err:  # only Orthanc's directory race is retried; anything else is a failure
                if STORAGE_DIRECTORY_RACE not in str(err) or attempt == UPLOAD_ATTEMPTS - 1:
                    raise
        if answer.get("Status") not in ("Success", "AlreadyStored"):
            raise OrthancError(f"upload refused: {answer}")
        return answer

    def upload_many(self, sources: Iterable[str | Path | bytes], threads: int = 4) -> list[dict[str, Any]]:
        """Upload several files concurrently (order of answers follows the input)."""
        items = list(sources)
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            return list(pool.map(self.upload, items))

    def studies(self) -> list[str]:
        """Orthanc IDs of all studies."""
        return list(self.get("/studies"))

    def series(self, study_id: str | None = None) -> list[str]:
        """Orthanc IDs of all series, or of one study's series."""
        if study_id is None:
            return list(self.get("/series"))
        return [s["ID"] for s in self.get(f"/studies/{study_id}/series")]

    def instances(self, series_id: str | None = None) -> list[str]:
        """Orthanc IDs of all instances, or of one series' instances."""
        if series_id is None:
            return list(self.get("/instances"))
        return [i["ID"] for i in self.get(f"/series/{series_id}/instances")]

    def study_instances(self, study_id: str) -> list[str]:
        return [i["ID"] for i in self.get(f"/studies/{study_id}/instances")]

    def instance_file(self, instance_id: str) -> bytes:
        """The stored DICOM file of an instance, byte for byte."""
        return self.request("GET", f"/instances/{instance_id}/file")

    def instance_tags(self, instance_id: str) -> dict[str, Any]:
        """GET /instances/{id}/simplified-tags: {keyword: value}."""
        return dict(self.get(f"/instances/{instance_id}/simplified-tags"))

    def study_tags(self, study_id: str) -> dict[str, Any]:
        """Study main DICOM tags plus the patient's ({"StudyInstanceUID": ..., "PatientID": ...})."""
        info = self.get(f"/studies/{study_id}")
        return {**info.get("PatientMainDicomTags", {}), **info.get("MainDicomTags", {})}

    def series_tags(self, series_id: str) -> dict[str, Any]:
        """Series main DICOM tags ({"SeriesInstanceUID": ..., "Modality": ..., "SeriesNumber": ...})."""
        return dict(self.get(f"/series/{series_id}").get("MainDicomTags", {}))

    def lookup(self, dicom_uid: str) -> list[dict[str, Any]]:
        """POST /tools/lookup: resources whose DICOM UID is `dicom_uid` ([{"ID", "Type", "Path"}])."""
        return list(self.post("/tools/lookup", dicom_uid))

    def lookup_study(self, study_instance_uid: str) -> str | None:
        """Orthanc ID of the study with this StudyInstanceUID, or None."""
        for hit in self.lookup(study_instance_uid):
            if hit.get("Type") == "Study":
                return str(hit["ID"])
        return None

    def lookup_series(self, series_instance_uid: str) -> str | None:
        for hit in self.lookup(series_instance_uid):
            if hit.get("Type") == "Series":
                return str(hit["ID"])
        return None

    def count_instances(self) -> int:
        return int(self.get("/statistics")["CountInstances"])

    def wait_for_instances(self, count: int, timeout: float = 60.0, series_instance_uid: str | None = None) -> int:
        """Poll until Orthanc holds at least `count` instances (in total, or in one series); returns the count."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            if series_instance_uid is None:
                seen = self.count_instances()
            else:
                series_id = self.lookup_series(series_instance_uid)
                seen = len(self.instances(series_id)) if series_id else 0
            if seen >= count:
                return seen
            if time.monotonic() > deadline:
                raise OrthancError(f"only {seen} of {count} instances arrived within {timeout:g} s")
            time.sleep(0.2)

    # ---------------------------------------------------------------- DICOM network actions

    def echo(self, modality: str) -> None:
        """C-ECHO a registered modality (raises OrthancError when it fails)."""
        self.post(f"/modalities/{modality}/echo", {})

    def store_to_modality(
        self, modality: str, resources: Sequence[str], synchronous: bool = False, timeout: float = 120.0
    ) -> dict[str, Any]:
        """Ask Orthanc to C-STORE resources (Orthanc IDs of studies/series/instances) to a registered modality.

        Asynchronous by default: returns {"ID": job_id, "Path": ...}; see `wait_job`.
        """
        return dict(
            self.post(f"/modalities/{modality}/store", {"Resources": list(resources), "Synchronous": synchronous},
                      timeout=timeout)
        )

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.get(f"/jobs/{job_id}"))

    def wait_job(self, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
        """Poll a job until it is Success (returned) or Failure (raises)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job.get("State") == "Success":
                return job
            if job.get("State") == "Failure":
                raise OrthancError(f"job {job_id} failed: {job}")
            if time.monotonic() > deadline:
                raise OrthancError(f"job {job_id} still {job.get('State')} after {timeout:g} s")
            time.sleep(0.2)

    # ---------------------------------------------------------------- DICOMweb

    def qido_studies(self, **query: str) -> list[dict[str, Any]]:
        """QIDO-RS GET /dicom-web/studies (DICOM JSON)."""
        qs = "&".join(f"{k}={urllib.parse.quote(str(v))}" for k, v in query.items())
        path = "/dicom-web/studies" + (f"?{qs}" if qs else "")
        return list(json.loads(self.request("GET", path, accept="application/dicom+json") or b"[]"))

    def qido_series(self, study_instance_uid: str) -> list[dict[str, Any]]:
        path = f"/dicom-web/studies/{study_instance_uid}/series"
        return list(json.loads(self.request("GET", path, accept="application/dicom+json") or b"[]"))
