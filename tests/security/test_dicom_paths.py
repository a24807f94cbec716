"""Issue 9, defect 1: UIDs from the network become paths. A hostile UID must be refused with
0xC000 and an INSTANCE_REJECTED_INVALID_UID event, and nothing may be written anywhere: no file
outside (or inside) the spool, no series row, no job. Files are private (0600, dirs 0700)."""
from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.node.helpers import NodeProcess
from tests.security.dicom_helpers import (  # noqa: F401  (make_node is a fixture)
    Audit, associate, ct_dataset, encode_implicit, eventually, make_node, quiet_node, raw_store, tree,
)

HOSTILE = [
    pytest.param({"study": "..", "series": "..", "sop": "1.2.3.999"}, id="study-and-series-dotdot"),
    pytest.param({"sop": ".."}, id="sop-dotdot"),
    pytest.param({"study": ".", "series": ".", "sop": "1.2.3.998"}, id="dot"),
    pytest.param({"series": "1.2/../../x"}, id="slash"),
    pytest.param({"study": "1.02.3"}, id="leading-zero"),
    pytest.param({"sop_class": "1.2.840.10008..5"}, id="sop-class-double-dot"),
]


@pytest.fixture(scope="module")
def hostile_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, Path]]:
    """One node for every hostile UID (each case is judged by what it adds), and the folder it lives in."""
    root = tmp_path_factory.mktemp("hostile")
    node = quiet_node(root / "node")
    try:
        yield node.start(), root
    finally:
        node.stop()


@pytest.mark.parametrize("uids", HOSTILE)
def test_hostile_uid_is_refused_and_nothing_is_written(hostile_target: tuple[NodeProcess, Path],
                                                       uids: dict[str, str]) -> None:
    node, root = hostile_target
    audit = Audit(node)
    before = tree(root)
    rejected = audit.count("INSTANCE_REJECTED_INVALID_UID")
    assoc = associate(node.port)
    try:
        status = raw_store(assoc, encode_implicit(ct_dataset(**uids)))
        assert status is not None, "the node must answer"
        assert status.Status == 0xC000, f"got 0x{status.Status:04X}"
        assert "invalid" in str(status.get("ErrorComment", "")).lower()
        assert assoc.send_c_echo().Status == 0x0000, "the association stays usable"
    finally:
        assoc.release()
    created = {p for p in tree(root) - before if not p.endswith((".sqlite-wal", ".sqlite-shm"))}
    assert not [p for p in created if p.endswith(".dcm")], f"files written: {sorted(created)}"
    assert not [p for p in created if "/spool/" in p], f"spool entries created: {sorted(created)}"
    assert eventually(lambda: audit.count("INSTANCE_REJECTED_INVALID_UID") == rejected + 1)
    # no hostile UID of any case was ever taken in
    assert audit.rows("SELECT count(*) FROM series")[0][0] == 0
    assert audit.rows("SELECT count(*) FROM instances")[0][0] == 0
    assert audit.rows("SELECT count(*) FROM jobs")[0][0] == 0


@pytest.mark.parametrize("value, valid", [
    ("1.2.840.10008.1.2", True), ("0", True), ("1.0.2", True), ("9" * 64, True),
    ("", False), (".", False), ("..", False), ("1..2", False), (".1", False), ("1.", False),
    ("1.02", False), ("01", False), ("9" * 65, False), ("1.2/3", False), ("1\\2", False), ("1.2\x00", False),
    ("1.٢", False), (" 1.2", False), ("1.2\n", False),
])
def test_uid_grammar(value: str, valid: bool) -> None:
    from dicomnode.core.uids import is_valid_uid

    assert is_valid_uid(value) is valid


def test_spool_and_outbox_paths_stay_under_their_roots(tmp_path: Path) -> None:
    """Paths read back from the database (or built from it) are confined too."""
    from dicomnode.config import load_settings
    from dicomnode.deliver.outbox import Outbox
    from dicomnode.receive.spool import OutsideRoot, Spool, SpoolError

    spool = Spool(tmp_path / "spool", 0)
    spool.ensure_writable()
    with pytest.raises(SpoolError):
        spool.relative_path("..", "..", "1.2.3")
    for relative in ("../escape.dcm", "1.2/../../escape.dcm", "/etc/passwd", ""):
        with pytest.raises(OutsideRoot):
            spool.path(relative)
        with pytest.raises(OutsideRoot):
            spool.store(relative, b"x")
    (tmp_path / "spool" / "link").symlink_to(tmp_path)
    with pytest.raises(OutsideRoot):
        spool.store("link/escape.dcm", b"x")
    outbox = Outbox(tmp_path / "outbox", load_settings(None, {"node.data_dir": tmp_path}))
    result = Dataset()
    result.SOPInstanceUID = generate_uid()
    with pytest.raises(ValueError):
        outbox.write("..", result)
    assert not (tmp_path / "escape.dcm").exists()
    assert not list(tmp_path.glob("*.dcm"))


def test_spool_files_and_audit_database_are_private(make_node, tmp_path: Path) -> None:
    node = make_node()
    ds = ct_dataset()
    assoc = associate(node.port)
    try:
        assert raw_store(assoc, encode_implicit(ds)).Status == 0x0000
    finally:
        assoc.release()
    data = node.data_dir
    spooled = data / "spool" / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
    assert spooled.is_file()
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(spooled) == 0o600
    for directory in (data, data / "spool", data / "outbox", spooled.parent, spooled.parent.parent):
        assert mode(directory) == 0o700, f"{directory} is {oct(mode(directory))}"
    db_files = [p for p in data.iterdir() if p.name.startswith("audit.sqlite")]
    assert any(p.name == "audit.sqlite" for p in db_files)
    for p in db_files:
        assert mode(p) == 0o600, f"{p.name} is {oct(mode(p))}"
