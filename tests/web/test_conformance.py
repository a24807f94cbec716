"""docs/conformance.md is generated from the lists the AE uses; this fails when it drifts."""
from __future__ import annotations

from dicomnode import conformance
from dicomnode.receive.negotiation import ACCEPTED_TRANSFER_SYNTAXES, STORAGE_SOP_CLASSES
from tests.conftest import REPO_ROOT

DOC = REPO_ROOT / "docs" / "conformance.md"


def test_committed_statement_matches_the_code() -> None:
    assert DOC.read_text(encoding="utf-8") == conformance.generate(), (
        "docs/conformance.md is out of date: run `python -m dicomnode.conformance > docs/conformance.md`")


def test_statement_lists_everything_accepted_and_sent() -> None:
    text = conformance.generate()
    for uid, _ in ACCEPTED_TRANSFER_SYNTAXES:
        assert f"`{uid}`" in text
    for uid in STORAGE_SOP_CLASSES:
        assert f"`{uid}`" in text
    for uid, _ in conformance.RESULT_SOP_CLASSES:
        assert f"`{uid}`" in text


def test_check_mode_detects_drift(tmp_path) -> None:
    stale = tmp_path / "conformance.md"
    stale.write_text(conformance.generate().replace("JPEG-LS Lossless", "JPEG-LS"))
    assert conformance.main(["--check", str(stale)]) == 1
    stale.write_text(conformance.generate())
    assert conformance.main(["--check", str(stale)]) == 0
