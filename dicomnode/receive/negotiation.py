"""What the node accepts: the transfer syntaxes, in the order it takes them, the storage SOP classes, and the
presentation contexts it offers, cheap to copy per connection."""
from __future__ import annotations

import copy

from pynetdicom import AllStoragePresentationContexts
from pynetdicom.presentation import PresentationContext

# What we accept (DICOM conformance, docs/conformance.md is generated from these lists).
ACCEPTED_TRANSFER_SYNTAXES: list[tuple[str, str]] = [
    ("1.2.840.10008.1.2", "Implicit VR Little Endian"),
    ("1.2.840.10008.1.2.1", "Explicit VR Little Endian"),
    ("1.2.840.10008.1.2.1.99", "Deflated Explicit VR Little Endian"),
    ("1.2.840.10008.1.2.2", "Explicit VR Big Endian (retired)"),
    ("1.2.840.10008.1.2.5", "RLE Lossless"),
    ("1.2.840.10008.1.2.4.50", "JPEG Baseline (Process 1)"),
    ("1.2.840.10008.1.2.4.51", "JPEG Extended (Process 2 & 4)"),
    ("1.2.840.10008.1.2.4.53", "JPEG Extended (Process 6 & 8, retired): stored, not decoded"),
    ("1.2.840.10008.1.2.4.55", "JPEG Full Progression (Process 10 & 12, retired): stored, not decoded"),
    ("1.2.840.10008.1.2.4.57", "JPEG Lossless (Process 14)"),
    ("1.2.840.10008.1.2.4.70", "JPEG Lossless, First-Order Prediction (Process 14 SV1)"),
    ("1.2.840.10008.1.2.4.80", "JPEG-LS Lossless"),
    ("1.2.840.10008.1.2.4.81", "JPEG-LS Near-Lossless"),
    ("1.2.840.10008.1.2.4.90", "JPEG 2000 Lossless Only"),
    ("1.2.840.10008.1.2.4.91", "JPEG 2000"),
    ("1.2.840.10008.1.2.4.201", "High-Throughput JPEG 2000 Lossless Only"),
    ("1.2.840.10008.1.2.4.202", "High-Throughput JPEG 2000 with RPCL Lossless Only"),
    ("1.2.840.10008.1.2.4.203", "High-Throughput JPEG 2000"),
]
LOSSY_TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.53", "1.2.840.10008.1.2.4.55",
    "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.203",
}
UNCOMPRESSED = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"]


def negotiation_order() -> list[str]:
    """pynetdicom accepts the first of *our* syntaxes that a context proposes. We never transcode,
    so keep what the sender has: lossless compressed first, then uncompressed, and a lossy
    syntax only when the sender offers nothing lossless."""
    uids = [uid for uid, _ in ACCEPTED_TRANSFER_SYNTAXES]
    lossless = [u for u in uids if u not in LOSSY_TRANSFER_SYNTAXES and u not in UNCOMPRESSED]
    return lossless + UNCOMPRESSED + [u for u in uids if u in LOSSY_TRANSFER_SYNTAXES]


STORAGE_SOP_CLASSES: list[str] = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]


class ContextList(list[PresentationContext]):
    """Our supported presentation contexts, cheap to copy.

    pynetdicom deep-copies them for every connection (_create_association). With ~170 storage
    classes that costs ~15 ms of CPU a connection: a burst of 50 connections spent over a second
    on it, ahead of a monitor's C-ECHO. A context's only mutable part is its transfer-syntax list
    (UIDs are immutable strings), so copying that list is the whole deep copy."""

    def __deepcopy__(self, memo: dict[int, object]) -> list[PresentationContext]:
        copies = []
        for context in self:
            clone = copy.copy(context)
            clone._transfer_syntax = list(context._transfer_syntax)
            copies.append(clone)
        return copies
