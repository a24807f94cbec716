"""A hostile DICOM peer for the security tests: pynetdicom driven below its safe API.

The node is the real `dicomnode serve` process (tests.node.helpers.NodeProcess); the audit
database is read directly with sqlite3, read-only, so a test sees exactly the committed rows.
"""
from __future__ import annotations

import os
import sqlite3
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, generate_uid
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.node.conftest import node_config
from tests.node.helpers import NodeProcess

IMPLICIT_LE = "1.2.840.10008.1.2"
ROOT = "1.2.826.0.1.3680043.8.498"  # pydicom's UID root; valid components throughout


def quiet_config(extra_node: str = "", extra: str = "") -> str:
    """The node test config (test pipeline, fast completion, no web), plus [node] settings."""
    return node_config(extra=f"[node]\n{extra_node}\n{extra}")


def quiet_node(folder: Path, config_text: str = "") -> NodeProcess:
    """A node process (not started yet) with its data in folder/data, on `config_text` or quiet_config()."""
    folder.mkdir(exist_ok=True)
    return NodeProcess(folder / "data", config_text or quiet_config())


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator:
    """A factory of real node processes under tmp_path/<name>/data, stopped at the end."""
    nodes: list[NodeProcess] = []

    def make(config_text: str = "", name: str = "node") -> NodeProcess:
        node = quiet_node(tmp_path / name, config_text)
        nodes.append(node)
        return node.start()

    yield make
    for node in nodes:
        node.stop()


def ct_dataset(study: str | None = None, series: str | None = None, sop: str | None = None,
               sop_class: str = CTImageStorage, **extra: Any) -> Dataset:
    """A small CT header (no pixels) with the given UIDs, fresh valid ones by default."""
    with warnings.catch_warnings():  # pydicom warns about the hostile values we mean to send
        warnings.simplefilter("ignore")
        return _ct_dataset(study, series, sop, sop_class, extra)


def _ct_dataset(study: str | None, series: str | None, sop: str | None, sop_class: str,
                extra: dict[str, Any]) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop if sop is not None else generate_uid()
    ds.StudyInstanceUID = study if study is not None else generate_uid()
    ds.SeriesInstanceUID = series if series is not None else generate_uid()
    ds.Modality = "CT"
    ds.PatientID = "SEC-TEST"
    ds.PatientName = "Security^Test"
    ds.InstanceNumber = 1
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds


def encode_implicit(ds: Dataset) -> bytes:
    data = encode(ds, True, True)
    assert data is not None, "pydicom could not encode the test data set"
    return data


def associate(port: int, calling: str = "HOSTILE", contexts: tuple[str, ...] = (CTImageStorage,)) -> Association:
    """An association proposing each SOP class in Implicit VR Little Endian (plus Verification)."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    for sop_class in contexts:
        ae.add_requested_context(sop_class, IMPLICIT_LE)
    ae.add_requested_context(Verification, IMPLICIT_LE)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    return assoc


def context_id(assoc: Association, sop_class: str = CTImageStorage) -> int:
    return next(int(cx.context_id) for cx in assoc.accepted_contexts if cx.abstract_syntax == sop_class)


def raw_store(assoc: Association, data: bytes | None, sop_class: str = CTImageStorage,
              affected_sop: str = "1.2.3.4", message_id: int = 1, timeout: float = 20) -> Dataset | None:
    """Send a C-STORE-RQ with these exact data-set bytes (None: CommandDataSetType 0x0101, no data
    set) and return the response's status data set, or None when no response came in `timeout`."""
    req = C_STORE()
    req.MessageID = message_id
    req.AffectedSOPClassUID = sop_class
    req.AffectedSOPInstanceUID = affected_sop
    req.Priority = 2
    req.DataSet = BytesIO(data) if data is not None else None
    with paused(assoc):
        assoc.dimse.send_msg(req, context_id(assoc, sop_class))
        return wait_response(assoc, timeout)


@contextmanager
def paused(assoc: Association) -> Iterator[None]:
    """Keep the requestor's reactor off the DIMSE queue while we read it (as send_c_store does)."""
    assoc._reactor_checkpoint.clear()
    deadline = time.monotonic() + 5
    while not assoc._is_paused and assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.001)
    try:
        yield
    finally:
        assoc._reactor_checkpoint.set()


def wait_response(assoc: Association, timeout: float) -> Dataset | None:
    """The next DIMSE response's status (and Error Comment); call inside paused()."""
    assoc.dimse_timeout = timeout
    _, rsp = assoc.dimse.get_msg(block=True)
    if rsp is None:
        return None
    status = Dataset()
    status.Status = rsp.Status
    if getattr(rsp, "ErrorComment", None):
        status.ErrorComment = rsp.ErrorComment
    return status


class Audit:
    """Read-only view of a node's audit database."""

    def __init__(self, node: NodeProcess) -> None:
        self.path = node.data_dir / "audit.sqlite"

    def rows(self, sql: str, *args: Any) -> list[tuple]:
        con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

    def events(self, name: str) -> list[tuple[str, str | None]]:
        """(message, series uid) of each event with this name, oldest first."""
        return [tuple(r) for r in self.rows("SELECT message, series_instance_uid FROM events WHERE name = ? ORDER BY id", name)]

    def count(self, name: str) -> int:
        return int(self.rows("SELECT count(*) FROM events WHERE name = ?", name)[0][0])

    def instance_paths(self) -> dict[str, str]:
        return {uid: path for uid, path in self.rows("SELECT sop_instance_uid, path FROM instances")}


def tree(*roots: Path) -> set[str]:
    """Every path under these directories (not following links): a before/after listing."""
    found: set[str] = set()
    for root in roots:
        for base, dirs, files in os.walk(root):
            for name in dirs + files:
                found.add(os.path.join(base, name))
    return found


def eventually(predicate, timeout: float = 15.0, interval: float = 0.1) -> Any:  # type: ignore[no-untyped-def]
    """The predicate's first truthy value within `timeout`, else its last value (for the assert)."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value
