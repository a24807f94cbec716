"""Who may associate: the called AE title, the calling AE and host allow-lists; and AE titles made fit to
log."""
from __future__ import annotations

import ipaddress

from dicomnode.config import Settings
from dicomnode.core.dimse import REJECT_CALLED_AE, REJECT_CALLING_AE, REJECT_NO_REASON
from storage.events import EventCode


def safe_text(value: str, limit: int = 16) -> str:
    """A peer-supplied AE title fit for one log line and a String(16) column: control characters
    escaped, then cut to `limit`."""
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in value)
    return text[:limit]


class AssociationPolicy:
    def __init__(self, settings: Settings) -> None:
        self.called_ae = settings.node.ae_title
        self.calling_aes = set(settings.security.allowed_calling_aes)  # validated and stripped by the settings
        self.networks = settings.security.networks  # parsed by the settings: a bad entry never gets here

    def refusal(self, called: str, calling: str, host: str) -> tuple[EventCode, tuple[int, int, int], str] | None:
        if called.strip() != self.called_ae:
            return (EventCode.ASSOCIATION_REJECTED_CALLED_AE, REJECT_CALLED_AE,
                    f"called AE title {called.strip()!r} is not this node's ({self.called_ae!r})")
        if self.calling_aes and calling.strip() not in self.calling_aes:
            return (EventCode.ASSOCIATION_REJECTED_CALLING_AE, REJECT_CALLING_AE,
                    f"calling AE title {calling.strip()!r} is not on the allow-list")
        if self.networks:
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                address = None
            if address is None or not any(address in net for net in self.networks):
                return (EventCode.ASSOCIATION_REJECTED_HOST, REJECT_NO_REASON,
                        f"host {host} is not on the allow-list")
        return None
