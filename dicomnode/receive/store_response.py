"""The C-STORE response written directly, byte-identical to pynetdicom's encoding.

pynetdicom builds every response as a pydicom Dataset from the primitive's attributes, encodes it
to measure the Command Group Length, then encodes it again: about a fifth of a receiver's CPU per
instance under concurrent associations. A C-STORE-RSP without an error comment or offending element
has a fixed layout (PS3.7 9.3.1.2; command sets are Implicit VR Little Endian, PS3.7 6.3.1), so it
is packed here instead; anything else (and a peer whose maximum PDU cannot take it in one fragment,
or a bound EVT_DIMSE_SENT handler, which expects pynetdicom's message object) goes through pynetdicom.
"""
from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from pynetdicom import evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

C_STORE_RSP_FIELD = 0x8001
NO_DATA_SET = 0x0101
LAST_COMMAND_FRAGMENT = b"\x03"  # message control header: command, last fragment (PS3.8 E.2)
PDV_OVERHEAD = 6  # PDV item length (4), context ID (1), message control header (1)


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def error_comment(text: str) -> str:
    """An Error Comment (LO): at most 64 characters, printable, no backslash (the VM separator)."""
    return "".join(c if c.isprintable() and c != "\\" else "?" for c in text)[:64]


def _lo(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b" " if len(raw) % 2 else raw


def store_response_command(sop_class_uid: str, sop_instance_uid: str, message_id: int, status: int,
                           error_comment: str | None = None) -> bytes | None:
    """The command set of a C-STORE-RSP (with its Error Comment, an LO of at most 64 characters, when
    given), or None when a value cannot be packed here (not ASCII, out of range, empty UID)."""
    if not sop_class_uid or not sop_instance_uid or (error_comment is not None and len(error_comment) > 64):
        return None
    try:
        body = b"".join((
            _element(0x0002, _uid(sop_class_uid)),
            _element(0x0100, struct.pack("<H", C_STORE_RSP_FIELD)),
            _element(0x0120, struct.pack("<H", message_id)),
            _element(0x0800, struct.pack("<H", NO_DATA_SET)),
            _element(0x0900, struct.pack("<H", status)),
            _element(0x0902, _lo(error_comment)) if error_comment else b"",
            _element(0x1000, _uid(sop_instance_uid)),
        ))
    except (UnicodeEncodeError, struct.error):
        return None  # not ASCII or out of range: pynetdicom's encoder decides
    return _element(0x0000, struct.pack("<I", len(body))) + body


def command_pdu(context_id: int, command: bytes) -> bytes:
    """A P-DATA-TF PDU carrying one command set as one last command fragment (PS3.8 9.3.5, E.2)."""
    item_length = len(command) + 2  # context ID and message control header
    return (struct.pack(">BBIIB", 0x04, 0x00, item_length + 4, item_length, context_id)
            + LAST_COMMAND_FRAGMENT + command)


def encode_store_response(primitive: C_STORE) -> bytes | None:
    """The command set of a C-STORE-RSP, or None when it needs more than the fixed fields."""
    if (primitive.MessageIDBeingRespondedTo is None or primitive.Status is None
            or primitive.OffendingElement is not None or primitive.ErrorComment is not None
            or not primitive.AffectedSOPClassUID or not primitive.AffectedSOPInstanceUID):
        return None
    return store_response_command(primitive.AffectedSOPClassUID, primitive.AffectedSOPInstanceUID,
                                  primitive.MessageIDBeingRespondedTo, primitive.Status)


def send_store_responses_directly(dimse: DIMSEServiceProvider) -> None:
    """Wrap one association's DIMSE provider so that plain C-STORE responses skip pynetdicom's encoder."""
    original: Callable[[Any, int], None] = dimse.send_msg

    def send_msg(primitive: Any, context_id: int) -> None:
        encoded = None
        if isinstance(primitive, C_STORE) and primitive.MessageIDBeingRespondedTo is not None \
                and not dimse.assoc.get_handlers(evt.EVT_DIMSE_SENT):
            encoded = encode_store_response(primitive)
        limit = dimse.maximum_pdu_size
        if encoded is None or (limit and len(encoded) + PDV_OVERHEAD > limit):
            original(primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, LAST_COMMAND_FRAGMENT + encoded))
        dimse.dul.send_pdu(pdata)

    dimse.send_msg = send_msg  # type: ignore[method-assign]  # pynetdicom has no encoder hook: wrap the method
