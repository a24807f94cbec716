"""Receiver processes: several Python processes behind the one DICOM port (node.receive_processes).

One Python process cannot use more than about one core for pynetdicom's decoding and our ingest, so
under concurrent associations the node starts N receiver processes. The node itself binds and
listens on the port and the receivers inherit that one socket: one accept queue, and a receiver
that serves more connections than another lets that one accept first (dicomnode.receive.balance),
so associations spread evenly (the kernel's SO_REUSEPORT hashing, used before, often put most of
them on one process). A connection that comes while no receiver runs (all restarting) waits in the
node's backlog instead of being refused.
Each runs the SCP, the ingestor and its side of the series lifecycle, writing to the same spool and
audit database; the completion checker, job workers, sender and web console stay in the node's main
process. What they share lives where every process sees it:

- which series open sessions carry: the `open_intake` table (dicomnode.receive.lifecycle);
- node.max_associations, for the whole node: a small shared count file (slots.SharedSlots);
- how many connections each serves, for the spread: another (balance.ConnectionLoads);
- fsync before success and dedupe: per instance, as in one process (the unique SOP Instance UID
  decides between two processes receiving the same instance at once).

The node supervises them (ReceiverPool, a thread in the main process): a receiver that dies is
audited (RECEIVER_EXITED), its open associations are closed as aborted, its sessions ended (their
series complete on the idle timer: a cut-off sender is no evidence of a whole series), and a new
one is started (RECEIVER_STARTED). A receiver exits when the node closes its stdin, which the
kernel also does when the node itself dies, even by kill -9.

    python -m dicomnode.receive.receivers INDEX SLOTS_FILE LOG_LEVEL LOG_FORMAT LISTEN_FD  (settings: a pickle on stdin)
"""
from __future__ import annotations

import logging
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from pynetdicom.transport import AddressInformation
from sqlalchemy import update

from dicomnode.config import Settings
from dicomnode.receive.balance import ConnectionLoads, loads_path
from dicomnode.receive.ingest import Ingestor
from dicomnode.receive.intake import Intake
from dicomnode.receive.lifecycle import SeriesLifecycle
from dicomnode.receive.scp import StorageSCP
from dicomnode.receive.servers import LISTEN_BACKLOG
from dicomnode.receive.slots import SharedSlots
from dicomnode.receive.spool import Spool
from storage.audit import record_event
from storage.db import Database, rows_changed
from storage.events import EventCode
from storage.models import Association, utcnow
from storage.states import AssociationState

log = logging.getLogger(__name__)

READY = b"ready\n"
GO = b"g"
START_TIMEOUT_S = 120.0  # imports and the first bind; generous for a busy 2-core machine
STOP_TIMEOUT_S = 10.0
RESTART_DELAY_S = (0.5, 30.0)  # the first restart at once-ish, then doubling while it keeps dying


class ReceiverFailed(Exception):
    """A receiver process did not come up; the message says why (its own words when it has any)."""


def default_processes() -> int:
    """node.receive_processes when unset: one per core, at most 4 (past that the shared SQLite
    writer, not the CPU, is the limit)."""
    return max(1, min(os.cpu_count() or 1, 4))


class Receiver:
    """One receiver process, seen from the node."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.failures = 0  # deaths in a row, for the restart delay
        self.listened = False  # RECEIVER_STARTED recorded for this process

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def launch(self, settings: Settings, slots_file: Path, listener: socket.socket) -> None:
        """Start the process; wait_ready() says whether it came up."""
        root = logging.getLogger()
        level = logging.getLevelName(root.level).lower() if root.level else "info"
        fmt = "json" if any(type(h.formatter).__name__ == "JsonFormatter" for h in root.handlers) else "kv"
        # the node's own sys.path (an editable checkout, a test's cwd) holds for the child too
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dicomnode.receive.receivers", str(self.index), str(slots_file), level, fmt,
             str(listener.fileno())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True, pass_fds=(listener.fileno(),))
        assert self.proc.stdin is not None and self.proc.stdout is not None
        blob = pickle.dumps(settings)
        self.proc.stdin.write(len(blob).to_bytes(8, "little") + blob)
        self.proc.stdin.flush()  # stdin stays open: its end is the receiver's signal to stop

    def go(self) -> None:
        """Let it listen (it imported and built everything meanwhile, but accepts nothing before the
        node has recovered what the last run left)."""
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(GO)
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # it failed already: wait_ready() reports its own words

    def wait_ready(self) -> None:
        """Until it listens, or ReceiverFailed with its own words when it has any."""
        proc = self.proc
        assert proc is not None and proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        line = b""
        while not line.endswith(b"\n") and time.monotonic() < deadline:
            readable, _, _ = select.select([proc.stdout], [], [], 0.5)
            if readable:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                line += chunk
        proc.stdout.close()
        if line != READY:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            why = line.decode(errors="replace").strip() or f"exited with status {proc.returncode}"
            raise ReceiverFailed(f"DICOM receiver process did not start: {why}")

    def ask_to_stop(self) -> None:
        """Close its stdin: it stops accepting and exits."""
        try:
            if self.proc is not None and self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass

    def stop(self) -> int | None:
        """ask_to_stop, and kill it if it does not exit in time; its exit status."""
        proc = self.proc
        if proc is None:
            return None
        self.ask_to_stop()
        try:
            return proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()


class ReceiverPool(threading.Thread):
    """Starts node.receive_processes receivers, restarts one that dies, stops them with the node."""

    def __init__(self, settings: Settings, db: Database, lifecycle: SeriesLifecycle, processes: int) -> None:
        super().__init__(name="receiver-supervisor", daemon=True)
        self.settings = settings
        self.db = db
        self.lifecycle = lifecycle
        # per node id (several nodes, on one host or several, may share the data directory): pids
        # mean nothing on another machine, and each node's receivers share only its own slots
        node_id = settings.node.identity()
        self.slots_file = Path(settings.node.data_dir) / f"receivers-{node_id}.slots"
        self.pid_file = Path(settings.node.data_dir) / f"receivers-{node_id}.pids"
        self.loads_file = loads_path(self.slots_file)
        self.receivers = [Receiver(i) for i in range(processes)]
        self.listener: socket.socket | None = None
        self._listen_error: str | None = None
        self._stopping = threading.Event()
        self._launched = False
        self._lock = threading.Lock()  # one start or stop of a receiver at a time

    def launch(self) -> None:
        """Start the processes, all at once, early: their start-up (imports) overlaps with each
        other's and with the node's; they listen only once start() lets them."""
        if self._launched:
            return
        self._launched = True
        stale = reap_stale_receivers(self.pid_file)
        if stale:
            with self.db.session() as s:
                record_event(s, EventCode.RECEIVER_EXITED,
                             f"DICOM receiver process(es) {', '.join(map(str, stale))} of a node that ended without "
                             "stopping them were still listening on the port: killed before this node listens",
                             details={"pids": stale})
        SharedSlots.create(self.slots_file, len(self.receivers))
        ConnectionLoads.create(self.loads_file, len(self.receivers))
        try:
            self.listener = self._listen()
        except OSError as exc:  # reported by start(), where the node's start-up failures are
            cfg = self.settings.node
            self._listen_error = f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}"
            return
        for receiver in self.receivers:
            receiver.launch(self.settings, self.slots_file, self.listener)
        self._write_pids()

    def _listen(self) -> socket.socket:
        """The node's listening socket, which every receiver inherits: bound now (a port in use is
        reported at start), listening from start() on (until then a connection is refused, not
        left waiting while the node recovers)."""
        cfg = self.settings.node
        listener = socket.socket(AddressInformation.from_tuple((cfg.host, cfg.port)).address_family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart finds TIME_WAIT connections
            listener.bind((cfg.host, cfg.port))
        except OSError:
            listener.close()
            raise
        return listener

    def _write_pids(self) -> None:
        """The receivers' pids, for the next start to find any this run leaves behind (kill -9 of the node)."""
        pids = "".join(f"{r.pid}\n" for r in self.receivers if r.pid)
        tmp = self.pid_file.with_name(self.pid_file.name + ".tmp")
        tmp.write_text(pids)
        os.replace(tmp, self.pid_file)

    def start(self) -> None:
        """All receivers listening (or ReceiverFailed), then the supervising thread."""
        self.launch()
        if self._listen_error is not None:
            raise ReceiverFailed(self._listen_error)
        assert self.listener is not None
        try:
            self.listener.listen(LISTEN_BACKLOG)  # the receivers' inherited copies listen with it
            for receiver in self.receivers:
                receiver.go()
            for receiver in self.receivers:
                receiver.wait_ready()
                self._announce(receiver)
        except (ReceiverFailed, OSError) as exc:
            self.stop_receivers()
            self._close_listener()
            raise ReceiverFailed(str(exc)) from None
        super().start()

    def _start_one(self, receiver: Receiver) -> None:
        assert self.listener is not None  # start() succeeded
        receiver.launch(self.settings, self.slots_file, self.listener)
        self._write_pids()
        receiver.go()
        receiver.wait_ready()
        self._announce(receiver)

    def _announce(self, receiver: Receiver) -> None:
        receiver.listened = True
        with self.db.session() as s:
            record_event(s, EventCode.RECEIVER_STARTED,
                         f"DICOM receiver {receiver.index} (pid {receiver.pid}) listening on "
                         f"{self.settings.node.host}:{self.settings.node.port}",
                         details={"receiver": receiver.index, "pid": receiver.pid})

    def run(self) -> None:
        while not self._stopping.wait(0.2):
            for receiver in self.receivers:
                with self._lock:
                    if self._stopping.is_set():
                        return
                    proc = receiver.proc
                    if proc is None or proc.poll() is not None:
                        self._replace(receiver)

    def _replace(self, receiver: Receiver) -> None:
        """A receiver died: close what it held, audit it, start another after a short delay."""
        proc = receiver.proc
        if proc is not None:
            self._cleanup(receiver, f"died ({_exit_text(proc.returncode)}); restarting it", logging.WARNING)
            receiver.proc, receiver.listened = None, False
            receiver.failures += 1
        delay = min(RESTART_DELAY_S[0] * 2 ** max(receiver.failures - 1, 0), RESTART_DELAY_S[1])
        if self._stopping.wait(delay):
            return
        try:
            self._start_one(receiver)
            receiver.failures = 0
        except Exception as exc:  # logged and tried again at the next pass, with a longer delay
            receiver.proc = None
            receiver.failures += 1
            log.error("cannot restart DICOM receiver %d: %s", receiver.index, exc)

    def _cleanup(self, receiver: Receiver, how: str, level: int = logging.INFO) -> None:
        """What the receiver held ends with it: its associations (aborted), its intake sessions
        (not orderly: their series complete on the idle timer), its association slots."""
        pid = receiver.pid
        SharedSlots.clear(self.slots_file, receiver.index)
        ConnectionLoads.mark_absent(self.loads_file, receiver.index)
        with self.db.session() as s:
            cut = rows_changed(s, update(Association)
                               .where(Association.receiver_pid == pid, Association.ended_at.is_(None))
                               .values(state=AssociationState.ABORTED, ended_at=utcnow()))
        released = self.lifecycle.sessions_died(pid)
        with self.db.session() as s:
            record_event(s, EventCode.RECEIVER_EXITED,
                         f"DICOM receiver {receiver.index} (pid {pid}) {how}; {cut} open association(s) closed "
                         f"as aborted, {len(released)} series now on the idle timer",
                         details={"receiver": receiver.index, "pid": pid, "associations_aborted": cut})
        log.log(level, "DICOM receiver %d (pid %d) %s", receiver.index, pid, how)

    def stop_receivers(self) -> None:
        self._stopping.set()
        with self._lock:
            for receiver in self.receivers:  # all at once, then wait for each
                receiver.ask_to_stop()
            for receiver in self.receivers:
                if receiver.proc is None:
                    continue
                status = receiver.stop()
                if receiver.listened:  # one that never listened held nothing and was never announced
                    self._cleanup(receiver, f"stopped with the node ({_exit_text(status)})")
                receiver.proc, receiver.listened = None, False

    def _close_listener(self) -> None:
        """The node's copy of the listening socket: the port is free once the receivers' copies closed too."""
        if self.listener is not None:
            self.listener.close()
            self.listener = None

    def stop(self) -> None:
        self.stop_receivers()
        self._close_listener()
        if self.is_alive():
            self.join(STOP_TIMEOUT_S)


def reap_stale_receivers(pid_file: Path, timeout: float = STOP_TIMEOUT_S) -> list[int]:
    """Kill the receiver processes a previous run of this node (same data directory) left listening.

    A receiver exits when the node's end of its stdin closes, also when the node is killed with -9,
    but that takes a moment, and meanwhile they hold the old node's listening socket (inherited), so
    the new node could not bind the port. Only processes that are still our receivers
    (their command line says so) are killed; what they acknowledged is already on disk."""
    try:
        recorded = [int(line) for line in pid_file.read_text().split() if line.isdigit()]
    except OSError:
        return []
    killed = []
    for pid in recorded:
        if pid == os.getpid() or not _is_receiver(pid):
            continue
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        killed.append(pid)
    deadline = time.monotonic() + timeout
    while any(_is_receiver(pid) for pid in killed) and time.monotonic() < deadline:
        time.sleep(0.05)
    return killed


def _is_receiver(pid: int) -> bool:
    """A live (not zombie) process running dicomnode.receive.receivers whose node is gone (its parent
    is no longer a dicomnode process): a live node's receivers are never touched."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        state, parent = fields[0], int(fields[1])
        parent_cmdline = Path(f"/proc/{parent}/cmdline").read_bytes() if parent > 1 else b""
    except (OSError, IndexError, ValueError):
        return False
    return b"dicomnode.receive.receivers" in cmdline and state != "Z" and not _is_node(parent_cmdline)


def _is_node(cmdline: bytes) -> bool:
    """`python -m dicomnode.cli serve ...` or `dicomnode serve ...`."""
    args = cmdline.split(b"\0")
    return b"serve" in args and any(a == b"dicomnode.cli" or a.rsplit(b"/", 1)[-1] == b"dicomnode" for a in args)


def _exit_text(status: int | None) -> str:
    if status is None:
        return "status unknown"
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


# -- the receiver process ------------------------------------------------------------------------
def build(settings: Settings, index: int, slots_file: Path, listen_fd: int) -> StorageSCP:
    """The SCP of receiver `index`, not listening yet; the schema is the node's (it migrated it)."""
    db = Database(settings.database_url)
    spool = Spool(settings.spool_dir, settings.node.min_free_disk_mb * 2**20)
    lifecycle = SeriesLifecycle(db, settings.series.evidence_grace_seconds, settings.node.identity())
    ingestor = Ingestor(db, spool, lifecycle, settings.node.max_instance_mb * 2**20)
    return StorageSCP(settings, db, Intake(ingestor, lifecycle), SharedSlots(slots_file, index),
                      shared=(listen_fd, ConnectionLoads(loads_path(slots_file), index)))


def _read_exactly(fd: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            raise EOFError("the node closed the pipe before sending the settings")
        data += chunk
    return data


def _read_settings() -> Settings:
    """The node's settings: an 8-byte length and a pickle on stdin (read unbuffered, so nothing
    past it is consumed: the rest of stdin is only watched for its end)."""
    size = int.from_bytes(_read_exactly(0, 8), "little")
    settings = pickle.loads(_read_exactly(0, size))
    if not isinstance(settings, Settings):
        raise TypeError(f"expected the node's settings on stdin, got {type(settings).__name__}")
    return settings


def _watch_stdin(stop: threading.Event, scp: StorageSCP) -> None:
    """The node closed our stdin (to stop us) or died (the kernel closed it): close the listening
    socket at once (a node restarted on the port must find it free), then stop."""
    try:
        while os.read(0, 4096):
            pass
    finally:
        server = scp.server
        if server is not None and server.socket is not None:
            try:
                server.socket.close()
            except OSError:
                pass
        stop.set()


def main(argv: list[str]) -> int:
    index, slots_file, level, fmt, listen_fd = int(argv[0]), Path(argv[1]), argv[2], argv[3], int(argv[4])
    from dicomnode.core.logs import setup_logging

    setup_logging(level, fmt)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the node stops us
    ready = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # anything printed goes to the log, not the pipe
    try:
        settings = _read_settings()
        scp = build(settings, index, slots_file, listen_fd)
        if os.read(0, 1) != GO:
            return 0  # the node went away (or stopped) before it let us listen
        scp.start()
    except Exception as exc:
        ready.write(f"receiver {index}: {exc}\n".encode(errors="replace"))
        ready.close()
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=_watch_stdin, args=(stop, scp), name="stdin-watch", daemon=True).start()
    ready.write(READY)
    ready.close()
    while not stop.wait(0.2):
        pass
    scp.stop()
    scp.db.close()
    # everything acknowledged is fsynced and committed: skip the interpreter's slow teardown
    logging.shutdown()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
