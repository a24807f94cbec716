"""Growth of one matched nodule between two exams: volume change, doubling time, diameter growth.

Measurement error: a change in volume within +-25 % is "stable". Segmentation volumetry of the same
nodule on two CTs differs by up to about 25 % from measurement alone (the 95 % limits of agreement of
repeat-scan volumetry, e.g. the NELSON trial's cut-off of 25 % volume change for "growth", and
Lung-RADS v2022 / Fleischner counting a change below 25 % as within measurement error); this
pipeline's own phantom figures (volume error within about 10 % for nodules >= 6 mm) are inside that.
So: growing when the volume rose by more than 25 %; shrinking when it fell by more than 25 %;
stable otherwise. The volume doubling time VDT = interval * ln 2 / ln(V2 / V1) is reported only for a
growing nodule (None: "not growing").
The Lung-RADS growth flag is the v2022 definition: mean diameter up by more than 1.5 mm (one-decimal
values) within 12 months; over a longer interval the same increase is flagged too (slow growth that a
reader must see), and `interval_days` tells the reader which it was.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from inference.clinical.lungrads import GROWTH_THRESHOLD_MM_PER_12_MONTHS
from inference.clinical.types import round_half_up

VOLUME_ERROR_PCT = 25.0
Status = Literal["new", "growing", "stable", "shrinking"]


@dataclass(frozen=True)
class Growth:
    interval_days: int | None
    volume_change_pct: float
    doubling_time_days: float | None  # None: not growing (stable, shrinking or within the measurement error)
    diameter_change_mm: float
    lung_rads_growth: bool  # v2022: mean diameter up by > 1.5 mm
    status: Status


def growth(prior_volume_mm3: float, current_volume_mm3: float, prior_mean_mm: float, current_mean_mm: float,
           interval_days: int | None) -> Growth:
    if prior_volume_mm3 <= 0 or current_volume_mm3 <= 0:
        raise ValueError(f"volumes must be > 0, got {prior_volume_mm3!r} and {current_volume_mm3!r}")
    ratio = current_volume_mm3 / prior_volume_mm3
    change = (ratio - 1.0) * 100.0
    delta = round_half_up(round_half_up(current_mean_mm, 1) - round_half_up(prior_mean_mm, 1), 1)
    flag = delta > GROWTH_THRESHOLD_MM_PER_12_MONTHS
    # a large nodule can grow 1.5 mm in diameter with < 25 % volume: the Lung-RADS flag makes it growing too
    status: Status = ("growing" if change > VOLUME_ERROR_PCT or (flag and ratio > 1.0)
                      else "shrinking" if change < -VOLUME_ERROR_PCT else "stable")
    vdt = None
    if status == "growing" and interval_days is not None and interval_days > 0:
        vdt = interval_days * math.log(2) / math.log(ratio)
    return Growth(interval_days, change, vdt, delta, flag, status)
