"""Storage commitment reported on the association of the N-ACTION (PS3.4 J.3.3 allows it; dcm4chee
does it when the association is still open): a pynetdicom PACS that sends the N-EVENT-REPORT before
it answers the N-ACTION. The node takes it there, without a new association."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import SecondaryCaptureImageStorage, StorageCommitmentPushModel  # type: ignore[attr-defined]

from tests.conftest import LIDC_SERIES
from tests.node.conftest import node_config
from tests.node.helpers import free_port, storescu, wait_for


class ReportingPacs:
    """Stores in memory; on an N-ACTION reports every instance it holds as committed (event type 1)
    and the others as failed (event type 2), on the same association, then answers the N-ACTION."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stored: set[str] = set()
        self.report_statuses: list[int] = []
        self.lock = threading.Lock()
        ae = AE(ae_title="PACS")
        ae.add_supported_context(SecondaryCaptureImageStorage)
        ae.add_supported_context(StorageCommitmentPushModel)
        self.server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[
            (evt.EVT_C_STORE, self.on_store), (evt.EVT_N_ACTION, self.on_action)])

    def on_store(self, event: evt.Event) -> int:
        with self.lock:
            self.stored.add(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def on_action(self, event: evt.Event) -> tuple[int, Dataset | None]:
        request = event.action_information
        report = Dataset()
        report.TransactionUID = request.TransactionUID
        ok, failed = [], []
        for item in request.ReferencedSOPSequence:
            (ok if str(item.ReferencedSOPInstanceUID) in self.stored else failed).append(item)
        for item in failed:
            item.FailureReason = 0x0112
        report.ReferencedSOPSequence = ok
        if failed:
            report.FailedSOPSequence = failed
        status, _ = event.assoc.send_n_event_report(report, 2 if failed else 1, StorageCommitmentPushModel,
                                                    "1.2.840.10008.1.20.1.1")
        self.report_statuses.append(int(status.Status))
        return 0x0000, None  # the N-ACTION response, after the report

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def reporting_pacs() -> Iterator[ReportingPacs]:
    pacs = ReportingPacs(free_port())
    yield pacs
    pacs.stop()


def test_a_report_on_the_same_association_commits_the_delivery(make_node, reporting_pacs: ReportingPacs) -> None:
    config = node_config(reporting_pacs.port).replace(
        f"port = {reporting_pacs.port}\n", f"port = {reporting_pacs.port}\nstorage_commitment = true\n")
    node = make_node(config).start()
    storescu(node.port, sorted(p for p in LIDC_SERIES.iterdir() if p.is_file())[:3])
    committed = wait_for(lambda: [d for d in node.audit("deliveries") if d["state"] == "committed"], 60, "a committed delivery")
    assert committed[0]["sop_instance_uid"] in reporting_pacs.stored and committed[0]["committed_at"]
    # the PACS notes the node's answer to its report after the node has recorded the commitment: wait for it too
    statuses = wait_for(lambda: list(reporting_pacs.report_statuses), 30, "the node's answer to the N-EVENT-REPORT")
    assert statuses == [0x0000], "the node answered the report on the N-ACTION's association"
    names = {e["name"] for e in node.audit("events") if e["delivery_id"] == committed[0]["id"]}
    assert {"DELIVERY_SENT", "DELIVERY_COMMIT_REQUESTED", "DELIVERY_COMMITTED"} <= names
    # the only association the node accepted is the scanner's: the PACS never had to call back
    assert [a["calling_ae"] for a in node.audit("associations")] == ["SCANNER"]
