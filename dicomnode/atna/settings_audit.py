"""Audited configuration changes: at each start the node compares its settings with the last start's
and records SETTINGS_CHANGED / USERS_CHANGED (the keys and user names, never a value), which the ATNA
exporter sends as Security Alerts. Settings come from a file, the environment and flags, none of which
the node sees being edited: the start is where a change takes effect, so that is where it is audited."""
from __future__ import annotations

import hashlib
import json
from typing import Any

from dicomnode.config import Settings
from storage.audit import record_event
from storage.db import Database
from storage.events import EventCode
from storage.models import SettingsSnapshot, utcnow

USERS = "web.users."
# keys whose change is a security configuration change (the rest: software configuration)
SECURITY_PREFIXES = ("security.", "tls.", "atna.", "web.users", "web.api_tokens", "web.session_secret",
                     "web.require_login", "web.allowed_hostnames", "web.tls_", "web.secure_cookies", "web.host")


def _leaves(value: Any, prefix: str, out: dict[str, str]) -> None:
    if isinstance(value, dict) and value:
        for key, sub in value.items():
            _leaves(sub, f"{prefix}{key}.", out)
        return
    # a digest, never the value: the table must not become a copy of secrets and password hashes
    canonical = json.dumps(value, sort_keys=True, default=str).encode()
    out[prefix.rstrip(".")] = hashlib.sha256(canonical).hexdigest()[:32]


def digests(settings: Settings) -> dict[str, str]:
    out: dict[str, str] = {}
    _leaves(settings.model_dump(mode="json"), "", out)
    return out


def is_security_key(key: str) -> bool:
    return key.startswith(SECURITY_PREFIXES)


def record_settings_changes(db: Database, settings: Settings) -> list[str]:
    """Compare with the last start, audit what changed, keep the new snapshot; the changed keys.
    The first start only takes the snapshot: there is nothing to compare with."""
    now = digests(settings)
    with db.session() as s:
        row = s.get(SettingsSnapshot, 1)
        if row is None:
            s.add(SettingsSnapshot(id=1, digests=now))
            return []
        before: dict[str, Any] = row.digests
        changed = sorted(k for k in now.keys() | before.keys() if now.get(k) != before.get(k))
        users = [k.removeprefix(USERS) for k in changed if k.startswith(USERS)]
        keys = [k for k in changed if not k.startswith(USERS)]
        if users:
            added = [u for u in users if USERS + u not in before]
            removed = [u for u in users if USERS + u not in now]
            new_password = [u for u in users if u not in added and u not in removed]
            parts = [f"{what} {', '.join(names)}" for what, names in
                     (("added", added), ("removed", removed), ("new password for", new_password)) if names]
            record_event(s, EventCode.USERS_CHANGED, f"console users changed since the last start: {'; '.join(parts)}",
                         details={"added": added, "removed": removed, "password_changed": new_password})
        if keys:
            shown = ", ".join(keys[:20]) + (f" and {len(keys) - 20} more" if len(keys) > 20 else "")
            record_event(s, EventCode.SETTINGS_CHANGED, f"settings changed since the last start: {shown}",
                         details={"keys": keys, "security": any(is_security_key(k) for k in keys)})
        row.digests, row.taken_at = now, utcnow()
    return changed
