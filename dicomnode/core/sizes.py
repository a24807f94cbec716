"""Byte counts for people: one formatting for the console, the command line and audit messages."""
from __future__ import annotations


def human_bytes(count: float) -> str:
    """1.5 GiB, 320.0 MiB, 12.0 KiB, 900 B (binary units; events and JSON carry exact byte counts)."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(count) >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count:.0f} B"
