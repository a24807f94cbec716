"""The comparison with the prior exam in the SR (issue 12): per nodule its change since the prior, at report level
the prior study and SR, or "prior not available: <reason>". The results of a follow-up are encoded inside
follow_up_context; nodule tracking UIDs (the SR's and the SEG's) read it."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import highdicom as hd
from pydicom.sr.codedict import codes

from dicomnode.results.options import ResultOptions
from dicomnode.results.sr_codes import (
    ABSENT,
    CHANGE_SINCE_PRIOR,
    CHANGE_STATUS,
    DAY_UNIT,
    DIAMETER_CHANGE,
    DOUBLING_TIME,
    GROWTH_FLAG,
    INTERVAL,
    MEAN,
    PRESENT,
    PRIOR_COMPARISON,
    PRIOR_DIAMETER,
    PRIOR_REPORT,
    PRIOR_STUDY,
    PRIOR_VOLUME,
    RESOLVED,
    VOLUME_CHANGE,
    coded,
    mm_measurement,
)
from dicomnode.results.uids import result_uid, settings_digest
from inference.findings import SeriesResult


@dataclass(frozen=True)
class NoduleFollowUp:
    """One current nodule against the prior: its tracking UID (the prior's for a matched nodule) and the change."""

    tracking_uid: str | None  # None: the UID derived for this result (no comparison)
    status: str | None = None  # new | growing | stable | shrinking; None: no comparison
    prior_mean_diameter_mm: float | None = None
    prior_volume_mm3: float | None = None
    interval_days: int | None = None
    volume_change_pct: float | None = None
    doubling_time_days: float | None = None  # None with a prior: not growing
    diameter_change_mm: float | None = None
    lung_rads_growth: bool | None = None


@dataclass(frozen=True)
class FollowUp:
    """What the SR says about the prior exam: per current nodule, and at report level."""

    statement: str  # "prior: ..." or "prior not available: <reason>"
    nodules: tuple[NoduleFollowUp, ...] = ()
    prior_study_uid: str | None = None
    prior_sr_uid: str | None = None
    resolved: tuple[str, ...] = ()  # one line per prior nodule not seen again


# the follow-up of the result being encoded: nodule_tracking (also used by the SEG) reads its tracking UIDs
_FOLLOW_UP: ContextVar[FollowUp | None] = ContextVar("follow_up", default=None)


@contextmanager
def follow_up_context(follow_up: FollowUp | None) -> Iterator[None]:
    """Encode the results inside this block with the comparison: tracking UIDs, change items, prior refs."""
    token = _FOLLOW_UP.set(follow_up)
    try:
        yield
    finally:
        _FOLLOW_UP.reset(token)


def derived_tracking_uid(index: int, series_uid: str, model_version: str, options: ResultOptions) -> str:
    """The Tracking UID the SR gives nodule `index` of a series when no prior says otherwise."""
    return result_uid("tracking", series_uid, model_version, settings_digest(options), index, options.uid_root)


def current_follow_up() -> FollowUp | None:
    """The comparison of the result being encoded (follow_up_context), or None."""
    return _FOLLOW_UP.get()


def nodule_follow_up(index: int) -> NoduleFollowUp | None:
    """Nodule `index`'s change since the prior in the result being encoded, or None."""
    follow_up = _FOLLOW_UP.get()
    if follow_up is None or index >= len(follow_up.nodules):
        return None
    return follow_up.nodules[index]


def follow_up_items(nodule: NoduleFollowUp) -> tuple[list[hd.sr.Measurement], list[hd.sr.QualitativeEvaluation],
                                                     list[hd.sr.TextContentItem]]:
    """NUM, CODE and TEXT items of a nodule's change since the prior (nothing without a comparison)."""
    if nodule.status is None:
        return [], [], []
    qe = hd.sr.QualitativeEvaluation
    evaluations = [qe(name=CHANGE_SINCE_PRIOR, value=coded(CHANGE_STATUS, nodule.status, "change status"))]
    texts: list[hd.sr.TextContentItem] = []
    if nodule.status == "new" or nodule.prior_mean_diameter_mm is None:
        return [], evaluations, texts
    num = hd.sr.Measurement
    measurements = [
        mm_measurement(PRIOR_DIAMETER, nodule.prior_mean_diameter_mm, derivation=MEAN),
        num(name=PRIOR_VOLUME, value=round(float(nodule.prior_volume_mm3 or 0.0), 1), unit=codes.UCUM.CubicMillimeter),
    ]
    if nodule.volume_change_pct is not None:
        measurements.append(num(name=VOLUME_CHANGE, value=round(nodule.volume_change_pct, 1), unit=codes.UCUM.Percent))
    if nodule.diameter_change_mm is not None:
        measurements.append(mm_measurement(DIAMETER_CHANGE, nodule.diameter_change_mm))
    if nodule.interval_days is not None:
        measurements.append(num(name=INTERVAL, value=int(nodule.interval_days), unit=DAY_UNIT))
    if nodule.doubling_time_days is not None:
        measurements.append(num(name=DOUBLING_TIME, value=round(nodule.doubling_time_days, 1), unit=DAY_UNIT))
    else:
        texts.append(hd.sr.TextContentItem(name=DOUBLING_TIME, value="not growing",
                                           relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    if nodule.lung_rads_growth is not None:
        evaluations.append(qe(name=GROWTH_FLAG, value=PRESENT if nodule.lung_rads_growth else ABSENT))
    return measurements, evaluations, texts


def follow_up_statements(follow_up: FollowUp) -> list[hd.sr.TextContentItem]:
    """Report-level TEXT: the comparison (or "prior not available: <reason>"), the prior study and SR, resolved."""
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    items = [hd.sr.TextContentItem(name=PRIOR_COMPARISON, value=follow_up.statement[:1024], relationship_type=contains)]
    if follow_up.prior_study_uid:
        items.append(hd.sr.TextContentItem(name=PRIOR_STUDY, value=follow_up.prior_study_uid, relationship_type=contains))
    if follow_up.prior_sr_uid:
        items.append(hd.sr.TextContentItem(name=PRIOR_REPORT, value=follow_up.prior_sr_uid, relationship_type=contains))
    items.extend(hd.sr.TextContentItem(name=RESOLVED, value=line[:1024], relationship_type=contains)
                 for line in follow_up.resolved)
    return items


def nodule_tracking(index: int, result: SeriesResult, options: ResultOptions, digest: str) -> hd.sr.TrackingIdentifier:
    """Tracking Identifier "Nodule <n>" and UID of one nodule: the same in its SR groups and its SEG segment.
    In a follow-up (follow_up_context), a matched nodule keeps the UID of the prior's SR, so it is followed."""
    nodule = nodule_follow_up(index)
    return hd.sr.TrackingIdentifier(
        uid=(nodule.tracking_uid if nodule is not None and nodule.tracking_uid else
             result_uid("tracking", result.series_instance_uid, result.model.version, digest, index, options.uid_root)),
        identifier=f"Nodule {index + 1}",
    )
