"""Whether a series was acquired with intravenous contrast, from its DICOM header, and what the report says then.

Lung-RADS v2022 is defined for low-dose CT without contrast. A diagnostic chest CT with contrast still reaches the
node (LIDC-IDRI holds many), and there an enhanced vessel inside a nodule is as dense as calcium: the characterisation
does not count a dense structure that runs on outside the nodule as calcium (`characterize.calcification`), but a thin
enhanced vessel can stay under that test, and a calcification read on such a series is confirmed on one without
contrast. The Contrast/Bolus module (PS3.3 C.7.6.4) is present only "if contrast media was used in this image";
its Contrast/Bolus Agent (0018,0010) is type 2 (may be empty), so an empty agent with a route or a volume still
says contrast was given. Oral contrast alone does not enhance the lungs' vessels.
"""
from __future__ import annotations

from pydicom.dataset import Dataset

_NONE = {"", "NONE", "NO", "N", "NA", "N/A", "0", "NIL", "WITHOUT", "NON", "NO CONTRAST", "NONE GIVEN"}
_ORAL = {"ORAL", "PO", "PER OS", "ORAL ROUTE"}  # the last: the coded route's meaning
_MAX_TEXT = 64  # the agent is LO (64 characters); a longer value is cut, not trusted further


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return " ".join(str(value or "").split())[:_MAX_TEXT]


def _positive(text: str) -> bool:
    try:
        return float(text) > 0.0
    except ValueError:
        return False


def _code_meaning(ds: Dataset, keyword: str) -> str:
    """The first item's CodeMeaning of a code sequence (Contrast/Bolus Agent Sequence, Administration Route
    Sequence), or ""."""
    items = ds.get(keyword)
    try:
        first = items[0] if items else None
    except (TypeError, IndexError):
        return ""
    return _text(first, "CodeMeaning") if isinstance(first, Dataset) else ""


def contrast_agent(ds: Dataset | None) -> str | None:
    """The contrast agent the header names ("contrast" where the module says one was given without naming it), or
    None for a series without intravenous contrast: no Contrast/Bolus module, an agent such as "NONE", or oral
    contrast alone. The agent and the route may be coded instead (Contrast/Bolus Agent Sequence, Contrast/Bolus
    Administration Route Sequence)."""
    if ds is None:
        return None
    agent = _text(ds, "ContrastBolusAgent") or _code_meaning(ds, "ContrastBolusAgentSequence")
    route = (_text(ds, "ContrastBolusRoute") or _code_meaning(ds, "ContrastBolusAdministrationRouteSequence")).upper()
    if agent.upper() in _NONE:
        given = route not in _NONE or _positive(_text(ds, "ContrastBolusVolume"))
        if not given:
            return None
        agent = "contrast"
    if route in _ORAL:
        return None
    return "".join(c if c.isprintable() else "?" for c in agent)


def contrast_exam_note(agent: str | None) -> str | None:
    """The exam's statement for a series with intravenous contrast."""
    if agent is None:
        return None
    return (f"series acquired with intravenous contrast ({agent}, DICOM Contrast/Bolus Agent): Lung-RADS is defined "
            "for low-dose CT without contrast; an enhanced vessel in a nodule can look like calcium, so confirm a "
            "benign calcification on a series without contrast")


def contrast_calcium_note(agent: str | None, calcified: bool) -> str | None:
    """A nodule read calcified on a series with intravenous contrast."""
    if agent is None or not calcified:
        return None
    return ("read calcified on a series with intravenous contrast: enhancement can look like calcium; confirm on a "
            "series without contrast before calling it benign (Lung-RADS 1)")
