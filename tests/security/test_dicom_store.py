"""Issue 9, defect 7 and the C-STORE risks: a request without a data set, an oversize data set,
one series under two studies, and header values that do not fit the audit database."""
from __future__ import annotations

import struct
import warnings

from pydicom.uid import generate_uid
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.security.dicom_helpers import (  # noqa: F401  (make_node is a fixture)
    Audit, associate, context_id, ct_dataset, encode_implicit, eventually, make_node, paused, quiet_config,
    raw_store, wait_response,
)


def test_c_store_with_command_data_set_type_none_gets_a_failure(make_node) -> None:
    """CommandDataSetType 0x0101: the request says there is no data set at all."""
    node = make_node()
    audit = Audit(node)
    assoc = associate(node.port)
    try:
        status = raw_store(assoc, None)
        assert status is not None, "no response to a C-STORE without a data set"
        assert status.Status == 0xC000, f"got 0x{status.Status:04X}"
        assert "no data set" in str(status.get("ErrorComment", ""))
        assert assoc.send_c_echo().Status == 0x0000, "the association stays usable"
    finally:
        assoc.release()
    assert eventually(lambda: audit.count("INSTANCE_REJECTED_NO_DATASET") == 1)
    assert audit.rows("SELECT count(*) FROM instances")[0][0] == 0
    assert "INSTANCE_REJECTED_NO_DATASET" in node.log.read_text(), "a log line names the refusal"


def _command_only(assoc, message_id: int) -> None:  # type: ignore[no-untyped-def]
    """Send only the command set of a C-STORE-RQ that announces a data set (0x0000)."""
    req = C_STORE()
    req.MessageID = message_id
    req.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    req.AffectedSOPInstanceUID = "1.2.3.4"
    req.Priority = 2
    req.DataSet = None
    message = C_STORE_RQ()
    message.primitive_to_message(req)
    message.command_set.CommandDataSetType = 0x0000  # "a data set follows" - and none will
    cx = context_id(assoc)
    for pdata in message.encode_msg(cx, 16384):
        assoc.dul.send_pdu(pdata)


def test_c_store_whose_announced_data_set_never_comes_gets_a_failure(make_node) -> None:
    node = make_node()  # node.dataset_timeout_s: 10 s by default
    audit = Audit(node)
    assoc = associate(node.port)
    try:
        with paused(assoc):
            _command_only(assoc, 7)
            status = wait_response(assoc, 25)  # well under the 60 s network timeout
        assert status is not None, "no response: the association hangs"
        assert status.Status == 0xC000
        assert "no data set" in str(status.get("ErrorComment", ""))
        # the next command after a missing data set is answered as usual
        assert assoc.send_c_echo().Status == 0x0000
        # a new command instead of the data set: the C-STORE is answered first, then the C-ECHO
        with paused(assoc):
            _command_only(assoc, 8)
            echo = C_ECHO()
            echo.MessageID = 9
            echo.AffectedSOPClassUID = Verification
            assoc.dimse.send_msg(echo, context_id(assoc, Verification))
            assoc.dimse_timeout = 15
            responses = [assoc.dimse.get_msg(block=True)[1] for _ in range(2)]
        assert [(type(r).__name__, r.MessageIDBeingRespondedTo, r.Status) for r in responses] == [
            ("C_STORE", 8, 0xC000), ("C_ECHO", 9, 0x0000)]
    finally:
        assoc.release()
    assert eventually(lambda: audit.count("INSTANCE_REJECTED_NO_DATASET") == 2)


def test_oversize_instance_is_refused_and_not_stored(make_node) -> None:
    # PDUs of 256 KiB, as most senders use: the data set comes in fragments and is refused with a
    # status (one PDU larger than the cap closes the connection instead, see the test below)
    node = make_node(quiet_config("max_instance_mb = 1\nmax_pdu_size = 262144"))
    audit = Audit(node)
    big = ct_dataset()
    big.add_new(0x00091010, "OB", b"\0" * (3 * 2**20))  # a 3 MiB private tag
    small = ct_dataset()
    assoc = associate(node.port)
    try:
        status = raw_store(assoc, encode_implicit(big))
        assert status is not None and status.Status == 0xA700, status
        assert "too large" in str(status.get("ErrorComment", ""))
        assert raw_store(assoc, encode_implicit(small), message_id=2).Status == 0x0000
    finally:
        assoc.release()
    assert eventually(lambda: audit.count("INSTANCE_REJECTED_TOO_LARGE") == 1)
    assert set(audit.instance_paths()) == {str(small.SOPInstanceUID)}
    assert not (node.data_dir / "spool" / str(big.StudyInstanceUID)).exists()


def test_series_under_a_second_study_is_refused_and_the_first_stays(make_node) -> None:
    node = make_node()
    audit = Audit(node)
    series, first_study, second_study = generate_uid(), generate_uid(), generate_uid()
    accepted = [ct_dataset(first_study, series, InstanceNumber=i) for i in (1, 2)]
    conflicting = ct_dataset(second_study, series, InstanceNumber=3)
    assoc = associate(node.port)
    try:
        for i, ds in enumerate(accepted, start=1):
            assert raw_store(assoc, encode_implicit(ds), message_id=i).Status == 0x0000
        status = raw_store(assoc, encode_implicit(conflicting), message_id=3)
        assert status is not None and status.Status == 0xC000, status
    finally:
        assoc.release()
    events = eventually(lambda: audit.events("SERIES_STUDY_CONFLICT"))
    assert len(events) == 1
    message, series_uid = events[0]
    assert first_study in message and second_study in message and series_uid == series
    assert set(audit.instance_paths()) == {str(ds.SOPInstanceUID) for ds in accepted}
    assert audit.rows("SELECT count(*) FROM studies")[0][0] == 1
    assert not (node.data_dir / "spool" / second_study).exists()


def test_header_values_that_do_not_fit_are_stored_without_them(make_node) -> None:
    """An Instance Number of 20 digits must not cost the instance (it used to fail after the file
    was written, leaving an orphan) nor reach the integer column."""
    node = make_node()
    audit = Audit(node)
    ds = ct_dataset()
    with warnings.catch_warnings():  # pydicom rightly warns about these values
        warnings.simplefilter("ignore")
        ds.add_new(0x00200013, "IS", "99999999999999999999")
        ds.add_new(0x00180050, "DS", "nan")
    assoc = associate(node.port)
    try:
        assert raw_store(assoc, encode_implicit(ds)).Status == 0x0000
    finally:
        assoc.release()
    assert audit.rows("SELECT instance_number FROM instances") == [(None,)]
    assert audit.rows("SELECT slice_thickness FROM series") == [(None,)]


def test_a_pdu_longer_than_the_instance_cap_is_not_read_into_memory(make_node) -> None:
    """pynetdicom reads a whole PDU before parsing it: a P-DATA-TF header claiming 2 GiB must end the
    connection at once instead of the node waiting for (and buffering) 2 GiB (default cap 1 GiB)."""
    node = make_node()
    audit = Audit(node)
    assoc = associate(node.port)
    try:
        raw = assoc.dul.socket.socket
        raw.sendall(struct.pack(">BBL", 0x04, 0, 2**31) + b"\0" * 1024)
        raw.settimeout(20)  # the network timeout is 60 s: waiting that long means it was reading
        closed = eventually(lambda: not assoc.is_established, timeout=20)
        assert closed, "the node kept reading the oversize PDU"
    finally:
        if assoc.is_established:
            assoc.abort()
    assert eventually(lambda: audit.count("INSTANCE_REJECTED_TOO_LARGE") == 1)
