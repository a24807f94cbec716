"""`AET@HOST:PORT` addresses on the command line."""
from __future__ import annotations

import re
from dataclasses import dataclass

_ADDRESS = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:@]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class DicomAddress:
    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "DicomAddress":
        m = _ADDRESS.match(text.strip())
        if not m or not 0 < int(m.group("port")) < 65536:
            raise ValueError(f"{text!r} is not AET@HOST:PORT (e.g. ORTHANC@127.0.0.1:4242)")
        return cls(m.group("ae"), m.group("host").strip("[]"), int(m.group("port")))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"
