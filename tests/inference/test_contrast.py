"""Intravenous contrast read from the series header, and what the exam and a calcified nodule then say."""
from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from inference.contrast import contrast_agent, contrast_calcium_note, contrast_exam_note


def header(**values: str) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize("values, agent", [
    ({}, None),  # no Contrast/Bolus module: no contrast
    ({"ContrastBolusAgent": "ISOVUE-300"}, "ISOVUE-300"),
    ({"ContrastBolusAgent": "  Omnipaque   350 ", "ContrastBolusRoute": "IV"}, "Omnipaque 350"),
    ({"ContrastBolusAgent": "NONE"}, None),
    ({"ContrastBolusAgent": "n/a"}, None),
    ({"ContrastBolusAgent": ""}, None),  # the module with an empty agent and nothing else
    ({"ContrastBolusAgent": "", "ContrastBolusRoute": "IV"}, "contrast"),  # type 2: given, not named
    ({"ContrastBolusAgent": "", "ContrastBolusVolume": "80"}, "contrast"),
    ({"ContrastBolusAgent": "", "ContrastBolusVolume": "0"}, None),
    ({"ContrastBolusAgent": "Gastrografin", "ContrastBolusRoute": "ORAL"}, None),  # no vascular enhancement
])
def test_the_contrast_agent_comes_from_the_header(values: dict[str, str], agent: str | None) -> None:
    assert contrast_agent(header(**values)) == agent


def coded(meaning: str) -> list[Dataset]:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "C-B0300", "SRT", meaning
    return [item]


def test_a_coded_agent_and_route() -> None:
    ds = header(ContrastBolusAgent="")
    ds.ContrastBolusAgentSequence = coded("Iohexol")
    assert contrast_agent(ds) == "Iohexol"
    ds.ContrastBolusAdministrationRouteSequence = coded("Oral route")
    assert contrast_agent(ds) is None
    ds.ContrastBolusAdministrationRouteSequence = coded("Intravenous route")
    assert contrast_agent(ds) == "Iohexol"


def test_no_header_and_a_hostile_agent() -> None:
    assert contrast_agent(None) is None
    ds = Dataset()
    with pytest.warns(UserWarning, match="maximum length"):  # pydicom warns; a peer may send it all the same
        ds.add_new(0x00180010, "LO", "ISOVUE\x1b[31m" + "X" * 200)  # control characters, far past LO's 64
    agent = contrast_agent(ds)
    assert agent is not None and "\x1b" not in agent and len(agent) <= 64 and agent.startswith("ISOVUE?")


def test_the_exam_and_a_calcified_nodule_say_what_contrast_changes() -> None:
    note = contrast_exam_note("ISOVUE-300")
    assert note is not None and "ISOVUE-300" in note and "without contrast" in note and "calcium" in note
    assert contrast_exam_note(None) is None
    calcified = contrast_calcium_note("ISOVUE-300", True)
    assert calcified is not None and "Lung-RADS 1" in calcified
    assert contrast_calcium_note("ISOVUE-300", False) is None and contrast_calcium_note(None, True) is None
