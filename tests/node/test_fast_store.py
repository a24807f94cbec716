"""The C-STORE fast path (dicomnode.receive.fast_store): it reads command sets as pynetdicom encodes
them, takes the C-STORE requests it can serve whole and leaves everything else to pynetdicom, and an
instance stored either way is the same file with the same audit row."""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, cast

import pytest
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ImplicitVRLittleEndian
from pynetdicom import _config as pynetdicom_config
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import time
from sqlalchemy import select

from dicomnode.config import Settings
from dicomnode.receive.fast_store import parse_store_request, split_pdvs
from dicomnode.receive.ingest import Ingestor
from dicomnode.receive.intake import Intake
from dicomnode.receive.lifecycle import SeriesLifecycle
from dicomnode.receive.scp import StorageSCP
from dicomnode.receive.spool import Spool
from storage.db import Database, sqlite_url
from storage.models import Instance
from tests.node.helpers import free_port
from tests.security.dicom_helpers import associate, context_id, ct_dataset, encode_implicit, paused, wait_response


def _store_command(message_id: int, sop_class: str, sop_instance: str, **extra: Any) -> bytes:
    req = C_STORE()
    req.MessageID = message_id
    req.AffectedSOPClassUID = sop_class
    req.AffectedSOPInstanceUID = sop_instance
    req.Priority = 2
    for key, value in extra.items():
        setattr(req, key, value)
    message = C_STORE_RQ()
    message.primitive_to_message(req)
    message.command_set.CommandDataSetType = 0x0000
    return cast(bytes, encode(message.command_set, True, True))


@pytest.mark.parametrize("message_id", [0, 1, 65535])
@pytest.mark.parametrize("sop_instance", ["1.2.3", "1.2.34", "1." + "2" * 62])
@pytest.mark.parametrize("sop_class", [CTImageStorage, "1.2.840.10008.5.1.4.1.1.128"])
def test_reads_pynetdicoms_c_store_requests(message_id: int, sop_instance: str, sop_class: str) -> None:
    command = _store_command(message_id, sop_class, sop_instance, MoveOriginatorApplicationEntityTitle="MOVER",
                             MoveOriginatorMessageID=4)
    request = parse_store_request(command)
    assert request is not None
    assert (request.message_id, request.sop_class_uid, request.sop_instance_uid) == (message_id, sop_class, sop_instance)


def test_leaves_other_messages_and_values_it_does_not_read_to_pynetdicom() -> None:
    echo = C_ECHO()
    echo.MessageID, echo.AffectedSOPClassUID = 1, "1.2.840.10008.1.1"
    message = C_ECHO_RQ()
    message.primitive_to_message(echo)
    assert parse_store_request(cast(bytes, encode(message.command_set, True, True))) is None  # not a C-STORE
    plain = _store_command(1, CTImageStorage, "1.2.3")
    no_data = plain.replace(struct.pack("<HHIH", 0, 0x0800, 2, 0x0000), struct.pack("<HHIH", 0, 0x0800, 2, 0x0101))
    assert no_data != plain and parse_store_request(no_data) is None  # CommandDataSetType: none
    letters = plain.replace(b"1.2.3\x00", b"1.2.A\x00")
    assert letters != plain and parse_store_request(letters) is None  # not a UID pynetdicom and we agree on
    assert parse_store_request(plain[:-3]) is None  # the last element runs past the end
    assert parse_store_request(struct.pack("<HHI", 8, 0x18, 2) + b"1\x00" + plain) is None  # not group 0000


def test_splits_pdus_into_their_items_and_refuses_malformed_ones() -> None:
    def item(context: int, control: int, value: bytes) -> bytes:
        return struct.pack(">IBB", len(value) + 2, context, control) + value

    body = bytearray(item(1, 3, b"command") + item(1, 0, b"data") + item(3, 2, b""))
    assert [(o, c, h, bytes(v)) for o, c, h, v in split_pdvs(body) or []] == [
        (0, 1, 3, b"command"), (13, 1, 0, b"data"), (23, 3, 2, b"")]
    assert split_pdvs(body + b"\x00") is None  # trailing bytes
    assert split_pdvs(bytearray(item(1, 3, b"abc")[:-1])) is None  # the item runs past the PDU
    assert split_pdvs(bytearray(struct.pack(">IB", 1, 1))) is None  # an item without a control header
    assert split_pdvs(bytearray(item(1, 7, b"x"))) is None  # unknown control bits


@pytest.fixture(autouse=True)
def _node_log_level(monkeypatch: pytest.MonkeyPatch) -> None:
    """As the node runs below --log-level debug (dicomnode.core.logs): pynetdicom binds no log handlers."""
    monkeypatch.setattr(pynetdicom_config, "LOG_HANDLER_LEVEL", "none")


class _Receiver:
    """The node's StorageSCP in this process, on a fresh database and spool."""

    def __init__(self, root: Path, **node: Any) -> None:
        self.db = Database(sqlite_url(root / "audit.sqlite"))
        self.db.migrate()
        (root / "spool").mkdir()
        self.spool = Spool(root / "spool", 0)
        lifecycle = SeriesLifecycle(self.db)
        self.port = free_port()
        settings = Settings(node={"port": self.port, "host": "127.0.0.1", **node})
        self.scp = StorageSCP(settings, self.db, Intake(Ingestor(self.db, self.spool, lifecycle), lifecycle))
        self.fast_stores = 0
        original = self.scp.store_fragments

        def counted(*args: Any) -> Any:
            self.fast_stores += 1
            return original(*args)

        self.scp.store_fragments = counted  # type: ignore[method-assign,assignment]  # a spy on the fast path

    def __enter__(self) -> _Receiver:
        self.scp.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.scp.stop()

    def stored(self) -> dict[str, str]:
        with self.db.session() as s:
            return {row.sop_instance_uid: row.path for row in s.scalars(select(Instance))}


def _associate(port: int) -> Any:
    assoc = associate(port)
    assert assoc.is_established
    return assoc


def _ct(**extra: Any) -> Any:
    """A small CT data set that pynetdicom's send_c_store can send (it reads the file meta's syntax)."""
    ds = ct_dataset(**extra)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


def _stored_bytes(receiver: _Receiver, sop: str) -> bytes:
    """The stored file's data set, as encoded after its file meta."""
    path = receiver.spool.path(receiver.stored()[sop])
    meta = dcmread(path, stop_before_pixels=True).file_meta
    assert meta.MediaStorageSOPInstanceUID == sop and meta.TransferSyntaxUID == ImplicitVRLittleEndian
    return path.read_bytes()[132 + 12 + int(meta.FileMetaInformationGroupLength):]


def test_c_stores_take_the_fast_path_and_store_the_same_instance(tmp_path: Path) -> None:
    with _Receiver(tmp_path, max_pdu_size=4096) as receiver:  # a data set arrives in many PDUs
        assoc = _associate(receiver.port)
        try:
            # pynetdicom serves what is not a C-STORE, and a request that comes before the association's
            # row is written (EVT_ACCEPTED's handler): the echo lets that pass
            echo = assoc.send_c_echo().Status
            sent = [_ct(BitsAllocated=16, PixelData=bytes(range(256)) * 64) for _ in range(3)]  # 16 KiB each
            statuses = [assoc.send_c_store(ds).Status for ds in sent]
            duplicate = assoc.send_c_store(sent[0]).Status  # success, kept once
        finally:
            assoc.release()
        assert statuses == [0x0000] * 3 and duplicate == 0x0000 and echo == 0x0000
        assert receiver.fast_stores == 4  # the duplicate too: the intake finds it before writing a file
        assert len(receiver.stored()) == 3
        for ds in sent:
            assert _stored_bytes(receiver, ds.SOPInstanceUID) == encode_implicit(ds)


def test_with_pynetdicoms_debug_log_the_association_stays_on_its_path(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pynetdicom_config, "LOG_HANDLER_LEVEL", "standard")  # --log-level debug
    with _Receiver(tmp_path) as receiver:
        assoc = _associate(receiver.port)
        try:
            assert assoc.send_c_echo().Status == 0x0000
            sent = _ct()
            assert assoc.send_c_store(sent).Status == 0x0000
        finally:
            assoc.release()
        assert receiver.fast_stores == 0
        assert _stored_bytes(receiver, sent.SOPInstanceUID) == encode_implicit(sent)


def test_a_command_set_in_two_pdvs_is_assembled_by_pynetdicom(tmp_path: Path) -> None:
    with _Receiver(tmp_path) as receiver:
        assoc = _associate(receiver.port)
        try:
            assert assoc.send_c_echo().Status == 0x0000
            split = _ct()
            command = _store_command(11, CTImageStorage, split.SOPInstanceUID)
            cx = context_id(assoc)
            pieces = P_DATA()
            # pynetdicom annotates tuples, its PDU encoder takes lists
            items: list[Any] = [[cx, b"\x01" + command[:20]], [cx, b"\x03" + command[20:]],
                                [cx, b"\x02" + encode_implicit(split)]]
            pieces.presentation_data_value_list = items
            with paused(assoc):
                assoc.dul.send_pdu(pieces)
                status = wait_response(assoc, 20)
            after = _ct()  # the next request takes the fast path again
            assert assoc.send_c_store(after).Status == 0x0000
        finally:
            assoc.release()
        assert status is not None and status.Status == 0x0000
        assert receiver.fast_stores == 1
        for ds in (split, after):
            assert _stored_bytes(receiver, ds.SOPInstanceUID) == encode_implicit(ds)


def test_an_oversize_data_set_is_refused_unbuffered_and_the_association_goes_on(tmp_path: Path) -> None:
    with _Receiver(tmp_path, max_instance_mb=1, max_pdu_size=65536) as receiver:  # PDUs under the cap
        assoc = _associate(receiver.port)
        try:
            assert assoc.send_c_echo().Status == 0x0000
            big = _ct(BitsAllocated=16, PixelData=b"\0" * (2 * 2**20))
            refused = assoc.send_c_store(big)
            small = _ct()
            accepted = assoc.send_c_store(small).Status
        finally:
            assoc.release()
        assert refused.Status == 0xA700 and "too large" in str(refused.get("ErrorComment", ""))
        assert accepted == 0x0000 and list(receiver.stored()) == [small.SOPInstanceUID]


def test_a_request_whose_data_set_never_comes_is_answered_before_the_next(tmp_path: Path) -> None:
    with _Receiver(tmp_path, dataset_timeout_s=1.0) as receiver:
        assoc = _associate(receiver.port)
        try:
            assert assoc.send_c_echo().Status == 0x0000
            cx = context_id(assoc)
            lost, stored = _ct(), _ct()
            pdata = P_DATA()
            items: list[Any] = [[cx, b"\x03" + _store_command(8, CTImageStorage, lost.SOPInstanceUID)],
                                [cx, b"\x03" + _store_command(9, CTImageStorage, stored.SOPInstanceUID)],
                                [cx, b"\x02" + encode_implicit(stored)]]
            pdata.presentation_data_value_list = items
            with paused(assoc):
                assoc.dul.send_pdu(pdata)
                assoc.dimse_timeout = 20
                answers = [assoc.dimse.get_msg(block=True)[1] for _ in range(2)]
                # and one whose data set does not come at all is answered after node.dataset_timeout_s
                alone = P_DATA()
                alone.presentation_data_value_list = [items[0]]
                assoc.dul.send_pdu(alone)
                late = assoc.dimse.get_msg(block=True)[1]
        finally:
            assoc.release()
        assert [(a.MessageIDBeingRespondedTo, a.Status) for a in answers] == [(8, 0xC000), (9, 0x0000)]
        assert late is not None and (late.MessageIDBeingRespondedTo, late.Status) == (8, 0xC000)
        assert receiver.fast_stores == 1 and list(receiver.stored()) == [stored.SOPInstanceUID]


def test_a_pdu_that_ends_a_c_store_and_begins_another_message_is_shared_with_pynetdicom(tmp_path: Path) -> None:
    with _Receiver(tmp_path) as receiver:
        assoc = _associate(receiver.port)
        try:
            assert assoc.send_c_echo().Status == 0x0000
            cx, echo_cx = context_id(assoc), context_id(assoc, Verification)
            stored = _ct()
            echo = C_ECHO()
            echo.MessageID, echo.AffectedSOPClassUID = 13, Verification
            echo_message = C_ECHO_RQ()
            echo_message.primitive_to_message(echo)
            data = encode_implicit(stored)
            first, second = P_DATA(), P_DATA()
            first.presentation_data_value_list = [[cx, b"\x03" + _store_command(12, CTImageStorage, stored.SOPInstanceUID)],
                                                  [cx, b"\x00" + data[:40]]]  # type: ignore[list-item]
            # the last fragment of the C-STORE and a whole C-ECHO-RQ in one PDU
            second.presentation_data_value_list = [[cx, b"\x02" + data[40:]],  # type: ignore[list-item]
                                                   [echo_cx, b"\x03" + encode(echo_message.command_set, True, True)]]
            with paused(assoc):
                assoc.dul.send_pdu(first)
                assoc.dul.send_pdu(second)
                assoc.dimse_timeout = 20
                answers = [assoc.dimse.get_msg(block=True)[1] for _ in range(2)]
        finally:
            assoc.release()
        assert [(type(a).__name__, a.MessageIDBeingRespondedTo, a.Status) for a in answers] == [
            ("C_STORE", 12, 0x0000), ("C_ECHO", 13, 0x0000)]
        assert receiver.fast_stores == 1
        assert _stored_bytes(receiver, stored.SOPInstanceUID) == data
