"""`dicomnode serve`: the node, and the web console on top of it."""
from __future__ import annotations

import argparse
import signal
import threading
from typing import Any

from rich.markup import escape

from dicomnode.cli.common import add_settings_args, console, parse_address, settings_from_args, warn_security
from dicomnode.config import Destination


def cmd_serve(args: argparse.Namespace) -> int:
    from dicomnode.core.logs import setup_logging

    extra: dict[str, Any] = {}
    if args.host is not None:
        extra["node.host"] = args.host
    if args.port is not None:
        extra["node.port"] = args.port
    if args.ae_title:
        extra["node.ae_title"] = args.ae_title
    if args.web_port is not None:
        extra["web.port"] = args.web_port
    if args.stable_seconds is not None:
        extra["series.stable_seconds"] = args.stable_seconds
    settings = settings_from_args(args, extra)
    for i, text in enumerate(args.send_to or [], start=1):
        address = parse_address(text, "--send-to")
        name = f"send-to-{i}"
        settings.destinations[name] = Destination(ae_title=address.ae_title, host=address.host, port=address.port)
        for route in settings.routes:
            route.destinations.append(name)
    setup_logging(args.log_level, args.log_format)
    warn_security(settings)
    # the whole node, imported once the settings are valid: only a `serve` that starts pays for it
    from dicomnode.cli.served import ServedNode

    node = ServedNode(settings)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    node.start()
    web = f", console http://{settings.web.host}:{node.web.port}" if node.web else ""
    console.print(f"[green]dicomnode[/] AE [bold]{escape(settings.node.ae_title)}[/] on "
                  f"{escape(settings.node.host)} port {settings.node.port}"
                  f"{escape(web)}; data in {escape(str(settings.node.data_dir.resolve()))}; Ctrl-C stops")
    stop.wait()
    node.stop()
    return 0


def add_commands(sub: Any) -> None:
    """serve"""
    p = sub.add_parser("serve", help="run the node (DICOM AE, workers, sender, web console)")
    add_settings_args(p)
    p.add_argument("--host", metavar="ADDRESS",
                   help="address the DICOM port listens on (overrides node.host, default 0.0.0.0: every address; "
                        "127.0.0.1 keeps it to this machine)")
    p.add_argument("--port", type=int, help="DICOM port (overrides node.port)")
    p.add_argument("--ae-title", help="this node's AE title (overrides node.ae_title)")
    p.add_argument("--web-port", type=int, help="web console port (overrides web.port; 0 picks a free one)")
    p.add_argument("--stable-seconds", type=float, help="series completion delay (overrides series.stable_seconds)")
    p.add_argument("--send-to", action="append", metavar="AET@HOST:PORT",
                   help="send every analysed series' results there (repeatable)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="kv", choices=["kv", "json"])
    p.set_defaults(func=cmd_serve)
