"""Patient safety for priors: never compare across patients (pure functions, no I/O).

A prior is the current patient's only when the PatientID matches, the IssuerOfPatientID matches when
either exam carries one, and PatientName and PatientBirthDate agree whenever both exams carry them.
Anything else is a mismatch: no comparison, an audited warning (dicomnode.priors.service).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PatientIdentity:
    """The attributes that say who an exam belongs to; "" where the exam does not carry one."""

    patient_id: str
    issuer: str = ""
    name: str = ""
    birth_date: str = ""

    @classmethod
    def of(cls, ds: Any) -> PatientIdentity:
        """From a pydicom Dataset (an instance header or a C-FIND answer)."""
        return cls(patient_id=_value(ds, "PatientID"), issuer=_value(ds, "IssuerOfPatientID"),
                   name=_value(ds, "PatientName"), birth_date=_value(ds, "PatientBirthDate"))

    def describe(self) -> str:
        """For audit messages: which attributes the exam carries (values stay in the database rows)."""
        carried = [k for k in ("issuer", "name", "birth_date") if getattr(self, k)]
        return f"PatientID {self.patient_id!r}" + (f" (+ {', '.join(carried)})" if carried else "")


def _value(ds: Any, keyword: str) -> str:
    try:
        value = ds.get(keyword, "")
    except Exception:  # a value pydicom cannot convert: the exam does not carry it usably
        return ""
    return "" if value is None else str(value).strip()


def normalise_name(name: str) -> str:
    """PN compared as a person would: case-blind, each ^ component trimmed, trailing empty components
    dropped ("Doe^John^^" == "DOE^JOHN"); only the alphabetic group (before any "=") counts."""
    alphabetic = name.split("=", 1)[0]
    components = [c.strip().upper() for c in alphabetic.split("^")]
    while components and not components[-1]:
        components.pop()
    return "^".join(components)


def normalise_date(value: str) -> str:
    """DA as YYYYMMDD (the old ACR-NEMA "YYYY.MM.DD" too)."""
    return value.strip().replace(".", "").replace("-", "")


def mismatches(current: PatientIdentity, prior: PatientIdentity) -> list[str]:
    """Why the prior is not provably the current patient's; empty when it is."""
    why: list[str] = []
    if not current.patient_id or not prior.patient_id:
        why.append("PatientID missing: the exams cannot be matched to one patient")
    elif current.patient_id != prior.patient_id:
        why.append("PatientID differs")
    if (current.issuer or prior.issuer) and current.issuer != prior.issuer:
        why.append("IssuerOfPatientID differs" if current.issuer and prior.issuer
                   else "IssuerOfPatientID present on one exam only")
    if current.name and prior.name and normalise_name(current.name) != normalise_name(prior.name):
        why.append("PatientName differs")
    if (current.birth_date and prior.birth_date
            and normalise_date(current.birth_date) != normalise_date(prior.birth_date)):
        why.append("PatientBirthDate differs")
    return why


def same_patient(current: PatientIdentity, prior: PatientIdentity) -> bool:
    return not mismatches(current, prior)
