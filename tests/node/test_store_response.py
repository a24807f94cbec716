"""The C-STORE response packed directly (dicomnode.receive.store_response) is byte for byte what
pynetdicom encodes, and whatever it does not pack goes through pynetdicom."""
from __future__ import annotations

import struct
from typing import Any, cast

import pytest
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from dicomnode.receive.store_response import (
    command_pdu, encode_store_response, send_store_responses_directly, store_response_command,
)

CT = "1.2.840.10008.5.1.4.1.1.2"


def response(status: int, message_id: int, instance_uid: str, sop_class: str = CT, **extra: Any) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = sop_class
    rsp.AffectedSOPInstanceUID = instance_uid
    rsp.Status = status
    for key, value in extra.items():
        setattr(rsp, key, value)
    return rsp


def pynetdicom_bytes(primitive: C_STORE) -> bytes:
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    return cast(bytes, encode(message.command_set, True, True))


@pytest.mark.parametrize("status", [0x0000, 0xB000, 0xB007, 0xA700, 0xA900, 0xC000, 0x0122])
@pytest.mark.parametrize("message_id", [0, 1, 7, 65535])
@pytest.mark.parametrize("instance_uid", ["1.2.3", "1.2.34", "1." + "2" * 62, "1.2.826.0.1.3680043.8.498.1"])
def test_identical_to_pynetdicom(status: int, message_id: int, instance_uid: str) -> None:
    primitive = response(status, message_id, instance_uid)
    assert encode_store_response(primitive) == pynetdicom_bytes(primitive)


def test_odd_length_sop_class_is_padded_like_pynetdicom() -> None:
    primitive = response(0, 3, "1.2.3.4", sop_class="1.2.840.10008.5.1.4.1.1.128")  # 27 characters
    assert encode_store_response(primitive) == pynetdicom_bytes(primitive)


def test_responses_with_more_than_the_fixed_fields_are_left_to_pynetdicom() -> None:
    assert encode_store_response(response(0xC000, 1, "1.2.3", ErrorComment="cannot store")) is None
    assert encode_store_response(response(0xA900, 1, "1.2.3", OffendingElement=[0x00100010])) is None
    assert encode_store_response(response(0, 1, "")) is None


class _Dul:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send_pdu(self, pdu: Any) -> None:
        self.sent.append(pdu)


class _Assoc:
    def __init__(self, handlers: list[Any]) -> None:
        self.dul = _Dul()
        self.handlers = handlers

    def get_handlers(self, event: Any) -> list[Any]:
        return self.handlers


class _Dimse:
    """The two things the wrapper reads of pynetdicom's DIMSE provider, and its original send_msg."""

    def __init__(self, max_pdu: int, handlers: list[Any] | None = None) -> None:
        self.assoc = _Assoc(handlers or [])
        self.dul = self.assoc.dul
        self.maximum_pdu_size = max_pdu
        self.fallback: list[Any] = []

    def send_msg(self, primitive: Any, context_id: int) -> None:
        self.fallback.append((primitive, context_id))


@pytest.mark.parametrize("max_pdu", [0, 16382])
def test_a_plain_response_goes_out_as_one_last_command_fragment(max_pdu: int) -> None:
    dimse = _Dimse(max_pdu)
    send_store_responses_directly(dimse)  # type: ignore[arg-type]
    primitive = response(0, 5, "1.2.3.4.5")
    dimse.send_msg(primitive, 3)
    assert not dimse.fallback
    (pdata,) = dimse.dul.sent
    assert pdata.presentation_data_value_list == [(3, b"\x03" + pynetdicom_bytes(primitive))]


def test_pynetdicom_sends_what_does_not_fit_or_is_watched() -> None:
    commented = response(0xC000, 5, "1.2.3", ErrorComment="no")
    for dimse, primitive in ((_Dimse(0), commented),  # an error comment
                             (_Dimse(64), response(0, 5, "1.2.3")),  # a peer with a tiny maximum PDU
                             (_Dimse(0, handlers=[object()]), response(0, 5, "1.2.3"))):  # EVT_DIMSE_SENT bound
        send_store_responses_directly(dimse)  # type: ignore[arg-type]
        dimse.send_msg(primitive, 1)
        assert dimse.fallback == [(primitive, 1)] and not dimse.dul.sent


@pytest.mark.parametrize("comment", ["cannot store", "odd", "x" * 64, "data set too large: over 1 bytes"])
@pytest.mark.parametrize("status", [0xA700, 0xC000, 0x0110])
def test_an_error_comment_is_packed_as_pynetdicom_packs_it(comment: str, status: int) -> None:
    primitive = response(status, 9, "1.2.3.4", ErrorComment=comment)
    assert store_response_command(CT, "1.2.3.4", 9, status, comment) == pynetdicom_bytes(primitive)


def test_what_cannot_be_packed_is_left_to_pynetdicom() -> None:
    assert store_response_command(CT, "1.2.3.4", 9, 0xC000, "é") is None  # not ASCII
    assert store_response_command(CT, "1.2.3.4", 9, 0xC000, "x" * 65) is None  # longer than an LO
    assert store_response_command(CT, "1.2.3.4", 70000, 0) is None  # not a message ID
    assert store_response_command(CT, "", 1, 0) is None


def test_the_response_pdu_is_one_last_command_fragment() -> None:
    command = store_response_command(CT, "1.2.3.4", 9, 0)
    assert command is not None
    pdu = command_pdu(5, command)
    assert pdu[:2] == b"\x04\x00" and struct.unpack(">I", pdu[2:6])[0] == len(pdu) - 6
    assert struct.unpack(">I", pdu[6:10])[0] == len(command) + 2 and pdu[10:12] == b"\x05\x03" and pdu[12:] == command
