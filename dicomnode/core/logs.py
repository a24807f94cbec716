"""Structured logs: one line per record, `key=value` pairs that name the series, job, association."""
from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

from pynetdicom import _config as pynetdicom_config


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        at = datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
        parts = [f"ts={at}", f"level={record.levelname.lower()}", f"logger={record.name}"]
        for key, value in (getattr(record, "context", None) or {}).items():
            parts.append(f"{key}={value}")
        parts.append(f"msg={json.dumps(record.getMessage())}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **(getattr(record, "context", None) or {}),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


# the libraries whose info lines are about their internals, not about the node's work
THIRD_PARTY_LOGGERS = ("highdicom", "pynetdicom", "pydicom", "alembic", "PIL")


def setup_logging(level: str = "info", fmt: str = "kv") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # other libraries' chatter (highdicom: ~8 "copy attributes of module" lines per result object;
    # pynetdicom: every PDU) only with --log-level debug; their warnings always
    quiet = logging.NOTSET if level.lower() == "debug" else logging.WARNING
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(quiet)
    # pynetdicom's own event handlers format a line for every PDU and DIMSE message, which the level
    # above then drops (a few per cent of a receiver's CPU per C-STORE): bound only for debug
    pynetdicom_config.LOG_HANDLER_LEVEL = "standard" if level.lower() == "debug" else "none"
