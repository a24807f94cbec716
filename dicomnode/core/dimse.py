"""DIMSE status codes and association rejection reasons, in one place (PS3.4 B.2.3, PS3.7 C, PS3.8 9.3.4).

The SCP answers with these, the SCU and the delivery loop judge a peer's answer with them, and the
conformance statement quotes them.
"""
from __future__ import annotations

# C-STORE / C-ECHO response statuses
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110

# a peer's C-STORE answer that means "stored": success, or the warnings coercion of data elements
# (0xB000), elements discarded (0xB006) and data set does not match SOP class (0xB007)
STORED_STATUSES = frozenset({SUCCESS, 0xB000, 0xB006, 0xB007})

# A-ASSOCIATE-RJ (result, source, reason) as the SCP sends them
REJECT_CALLED_AE = (0x01, 0x01, 0x07)  # rejected-permanent, service-user, called AE not recognised
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # rejected-permanent, service-user, calling AE not recognised
REJECT_NO_REASON = (0x01, 0x01, 0x01)  # rejected-permanent, service-user, no reason given
REJECT_LIMIT = (0x02, 0x03, 0x02)  # rejected-transient, service-provider (presentation), local limit exceeded
