"""Temporary files for writing a file whole or not at all: beside the target (so the rename is atomic) and unique to
the process and the call, so that two processes writing the same cache entry at once (two node workers, or the node
and `characterize_eval` exporting the same ONNX graph) never write, rename or delete each other's temporary file."""
from __future__ import annotations

import os
import uuid
from pathlib import Path


def temporary_beside(path: Path) -> Path:
    """A hidden temporary path in `path`'s folder that no other writer uses."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
