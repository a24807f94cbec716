"""Issue 9: a bounded, seeded fuzz of the C-STORE path over real associations.

Data sets are encoded by hand (Implicit VR Little Endian), so nothing in the client cleans them
up: hostile UIDs, odd lengths, values that do not fit their VR, a whole Part 10 file (preamble and
file meta) as the data set, truncated streams and lengths that run past the end. After each batch:
the node answers C-ECHO, nothing appeared outside its data directory, every instance acknowledged
with 0x0000 is in the audit database and the spool, and the spool holds nothing else.
"""
from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from pathlib import Path

from tests.security.dicom_helpers import (  # noqa: F401  (make_node is a fixture)
    ROOT, Audit, associate, make_node, raw_store, tree,
)

SEED = 20269
BATCHES = 8
PER_BATCH = 40
CT = "1.2.840.10008.5.1.4.1.1.2"
HOSTILE_UIDS: list[bytes] = [
    b"..", b".", b"/", b"\\", b"", b"1" * 65, b"1.02.3", b"01.2", b"1..2", b".1.2", b"1.2.",
    "1.٢.3".encode(), "1.2.é".encode(), b"1.2\x00.3", b"\x00", b"1.2/../../x", b"..\\..\\x", b"1.2.3 4",
    b"%2e%2e", b"1.2.3\n4",
]
UID_TAGS = {"sop_class": (0x0008, 0x0016), "sop": (0x0008, 0x0018), "study": (0x0020, 0x000D),
            "series": (0x0020, 0x000E)}


@dataclass
class Case:
    kind: str
    data: bytes
    sop_uid: str
    hostile_uid: bool = False


def element(group: int, elem: int, value: bytes, length: int | None = None) -> bytes:
    """One Implicit VR Little Endian element; `length` may lie about the value's length."""
    return struct.pack("<HHI", group, elem, len(value) if length is None else length) + value


def even(text: str) -> bytes:
    raw = text.encode()
    return raw + (b"\0" if len(raw) % 2 else b"")


class Generator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.counter = 0

    def uid(self) -> str:
        self.counter += 1
        return f"{ROOT}.{SEED}.{self.counter}"

    def base(self, study: str, series: str) -> tuple[dict[tuple[int, int], bytes], str]:
        sop = self.uid()
        elements = {
            (0x0008, 0x0016): even(CT), (0x0008, 0x0018): even(sop), (0x0008, 0x0060): b"CT",
            (0x0010, 0x0010): even("Fuzz^Patient"), (0x0010, 0x0020): even("FUZZ"),
            (0x0020, 0x000D): even(study), (0x0020, 0x000E): even(series),
            (0x0020, 0x0011): even("1"), (0x0020, 0x0013): even(str(self.counter)),
        }
        return elements, sop

    @staticmethod
    def encode(elements: dict[tuple[int, int], bytes]) -> bytes:
        return b"".join(element(g, e, v) for (g, e), v in sorted(elements.items()))

    def case(self, study: str, series: str) -> Case:
        elements, sop = self.base(study, series)
        kind = self.rng.choice(["valid", "uid", "uid", "uid", "odd-size", "wrong-vr", "part10", "truncated",
                                "overlong", "garbage"])
        if kind == "uid":
            name = self.rng.choice(sorted(UID_TAGS))
            elements[UID_TAGS[name]] = self.rng.choice(HOSTILE_UIDS)
            return Case(f"uid-{name}", self.encode(elements), sop, hostile_uid=True)
        if kind == "odd-size":
            size = self.rng.choice([0, 1, 3, 255, 4097, self.rng.randrange(0, 300_000)])
            elements[(0x0009, 0x0010)] = even("FUZZ")
            elements[(0x0009, 0x1010)] = bytes(self.rng.getrandbits(8) for _ in range(min(size, 512))) * (size // 512 + 1)
            elements[(0x0009, 0x1010)] = elements[(0x0009, 0x1010)][:size]
            return Case(kind, self.encode(elements), sop)
        if kind == "wrong-vr":
            choice = self.rng.randrange(4)
            if choice == 0:
                elements[(0x0028, 0x0010)] = b"\x01\x02\x03"  # US with 3 bytes
            elif choice == 1:
                elements[(0x0020, 0x0013)] = b"\xff\xfe\x00\x01"  # IS that is binary
            elif choice == 2:
                elements[(0x0010, 0x0010)] = b"\xff" * 5000  # PN far over 64 chars per component
            else:
                elements[(0x0018, 0x0050)] = b"1e999999"  # DS that overflows
            return Case(kind, self.encode(elements), sop)
        if kind == "part10":
            meta = element(0x0002, 0x0010, even("1.2.840.10008.1.2"))
            meta = element(0x0002, 0x0000, struct.pack("<I", len(meta))) + meta
            return Case(kind, b"\0" * 128 + b"DICM" + meta + self.encode(elements), sop)
        data = self.encode(elements)
        if kind == "truncated":
            return Case(kind, data[: self.rng.randrange(1, len(data))], sop)
        if kind == "overlong":
            return Case(kind, data + element(0x0009, 0x1011, b"\0" * 16, length=0xFFFFFFF0), sop)
        if kind == "garbage":
            flipped = bytearray(data)
            for _ in range(self.rng.randrange(1, 8)):
                flipped[self.rng.randrange(len(flipped))] = self.rng.getrandbits(8)
            return Case(kind, bytes(flipped), sop)
        return Case("valid", data, sop)


def outside_listing(tmp_path: Path, data_dir: Path) -> set[str]:
    """Everything around the data directory: the test directory tree and its parent's entries."""
    inside = str(data_dir) + "/"
    around = {p for p in tree(tmp_path) if not p.startswith(inside)}
    return around | {str(p) for p in tmp_path.parent.iterdir()}


def test_fuzz_c_store(make_node, tmp_path: Path) -> None:
    node = make_node()
    audit = Audit(node)
    spool = node.data_dir / "spool"
    before = outside_listing(tmp_path, node.data_dir)
    gen = Generator(SEED)
    acknowledged: set[str] = set()
    for batch in range(BATCHES):
        study, series = gen.uid(), gen.uid()
        cases = [gen.case(study, series) for _ in range(PER_BATCH)]
        assoc = associate(node.port, calling=f"FUZZ{batch}")
        assert assoc.is_established
        try:
            for i, case in enumerate(cases, start=1):
                status = raw_store(assoc, case.data, message_id=i)
                assert status is not None, f"batch {batch}, {case.kind}: no response"
                if status.Status == 0x0000:
                    assert not case.hostile_uid, f"batch {batch}: {case.kind} was accepted"
                    acknowledged.add(case.sop_uid)
                assert assoc.is_established, f"batch {batch}, {case.kind}: association lost"
        finally:
            assoc.release()

        echo = associate(node.port, calling="MONITOR")
        try:
            assert echo.send_c_echo().Status == 0x0000, f"no C-ECHO after batch {batch}"
        finally:
            echo.release()
        assert outside_listing(tmp_path, node.data_dir) - {str(node.log)} == before - {str(node.log)}, (
            f"batch {batch} created files outside the data directory")
        recorded = audit.instance_paths()
        assert acknowledged <= set(recorded), f"acknowledged but not recorded: {acknowledged - set(recorded)}"
        spooled = {str(p.relative_to(spool)) for p in spool.rglob("*") if p.is_file()}
        assert {recorded[uid] for uid in acknowledged} <= spooled
        assert spooled == set(recorded.values()), f"spool files without a row: {spooled - set(recorded.values())}"
    assert acknowledged, "the fuzz should also store the valid cases"
