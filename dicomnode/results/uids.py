"""Deterministic UIDs for result objects (docs/architecture.md, "Promises": re-processing replaces, never duplicates).

Re-processing the same series with the same model and settings must give the same
Series/SOP Instance UIDs, so a re-send replaces the earlier objects in the PACS.
"""
from __future__ import annotations

import hashlib
import json
import uuid

from pydicom.uid import UID, generate_uid

from dicomnode.results.options import ResultOptions

# Options that only decide what is sent (not what it contains) stay out of the digest.
_NOT_CONTENT = {"send_sr", "send_overlays", "send_seg", "not_analysed_report"}


def settings_digest(options: ResultOptions) -> str:
    """Short hash of the options that change the encoded content."""
    content = options.model_dump(exclude=_NOT_CONTENT, mode="json")
    blob = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _uid_from_parts(parts: list[str], root: str | None) -> UID:
    if root is not None:
        prefix = root if root.endswith(".") else root + "."
        # one joined source: plain concatenation of several would make ("ab","c") == ("a","bc")
        return generate_uid(prefix=prefix, entropy_srcs=["\x1f".join(parts)])
    # generate_uid(prefix=None) ignores entropy, so derive a name-based UUID (2.25 form) ourselves
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return UID(f"2.25.{uuid.UUID(bytes=digest[:16], version=5).int}")


def result_uid(
    kind: str,
    source_series_uid: str,
    model_version: str,
    settings_digest: str,
    index: int = 0,
    root: str | None = None,
) -> UID:
    """UID for one result item.

    kind names what the UID identifies, e.g. "sr-series", "sr-instance", "overlay-series",
    "overlay-instance", "seg-series", "seg-instance", "tracking"; index numbers items of
    the same kind (overlay image, nodule).
    """
    parts = ["dicomnode-result", kind, str(source_series_uid), model_version, settings_digest, str(index)]
    return _uid_from_parts(parts, root)


def device_uid(device_name: str, model_name: str, weights_sha256: str, root: str | None = None) -> UID:
    """Device UID of the algorithm as it ran: this node, this model, these exact weights.

    IHE AIR identifies the algorithm by a Device UID (0018,1002) that must change whenever the
    algorithm changes; the name and version can be reused by a retraining, the weights hash cannot.
    The same UID is the SR's Device Observer UID. Independent of the series.
    """
    if not weights_sha256:
        raise ValueError("weights_sha256 is empty: the device UID must change with the weights")
    return _uid_from_parts(["dicomnode-device", device_name, model_name, weights_sha256.lower()], root)
