"""The node with its web console: what `dicomnode serve` runs (kept apart so that the other commands
do not import the whole node)."""
from __future__ import annotations

from typing import Any

from dicomnode.config import Settings
from dicomnode.node import Node


class ServedNode(Node):
    """The node with its web console (when web.enabled): what `dicomnode serve` runs. The console
    is started here, above both, so that the node never imports the web and the web only imports
    the node."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.web: Any = None  # the WebServer once started

    def start_services(self) -> None:
        if not self.settings.web.enabled:
            return
        try:
            from dicomnode.web.server import WebServer
        except ImportError:
            return  # the console is optional; the DICOM side runs without it
        self.web = WebServer(self)
        self.web.start()

    def stop_services(self) -> None:
        if self.web is not None:
            self.web.stop()
