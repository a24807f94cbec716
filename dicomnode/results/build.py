"""One entry point for the node: findings + source series -> the DICOM objects to send."""
from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset

from dicomnode.results.options import ResultOptions
from dicomnode.results.overlay import build_overlays
from dicomnode.results.seg import build_seg
from dicomnode.results.sr import build_not_analysed_sr, build_sr
from inference.findings import SeriesResult


def build_results(
    source: Sequence[Dataset], result: SeriesResult, options: ResultOptions | None = None
) -> list[Dataset]:
    """SR, then overlays, then SEG, as the options ask; only the not-analysed SR when not analysed.

    UIDs are deterministic (see uids.py), so calling this again for the same series, model
    and settings yields objects that replace the earlier ones in the PACS.
    """
    options = options or ResultOptions()
    if not result.analysed:
        if not options.not_analysed_report:
            return []
        reason = result.not_analysed_reason or "the series does not suit the model"
        return [build_not_analysed_sr(source, reason, result.model, options, result.series_instance_uid)]
    objects: list[Dataset] = []
    # the SEG first: the SR references its segments (IHE AIR, TID 1411)
    seg = build_seg(source, result, options) if options.send_seg else None
    if options.send_sr:
        objects.append(build_sr(source, result, options, segmentation=seg))
    if options.send_overlays:
        objects.extend(build_overlays(source, result, options))
    if seg is not None:
        objects.append(seg)
    return objects
