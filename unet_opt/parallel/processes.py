"""This machine's processes: the id a worker records, whether it is still alive, dying with a parent,
children that start deaf to stop signals."""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import socket
import tempfile
from collections.abc import Iterator
from multiprocessing import resource_tracker
from pathlib import Path


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def is_dead_here(worker: str | None) -> bool:
    """A worker of this machine whose process is gone (another machine's is judged by heartbeat)."""
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def left_by_the_dead(prefix: str) -> list[Path]:
    """The temporary folder's entries named `prefix` + a pid + "-..." whose process is gone: what a killed
    process had no time to remove (SIGKILL)."""
    return [entry for entry, alive in _entries(prefix) if not alive]


def held_by_the_living(prefix: str) -> list[Path]:
    """The same entries of processes still running: work on its way."""
    return [entry for entry, alive in _entries(prefix) if alive]


def _entries(prefix: str) -> list[tuple[Path, bool]]:
    """The temporary folder's entries named `prefix` + a pid + "-...", each with whether its process runs."""
    found = []
    for entry in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        pid = entry.name.removeprefix(prefix).split("-")[0]
        if pid.isdigit():
            found.append((entry, is_running(int(pid))))
    return found


def is_running(pid: int) -> bool:
    """Process `pid` exists and is not a zombie (a dead child its parent has not waited for yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def die_with_parent() -> None:
    """Ask Linux to kill this process when the process that started it dies (SIGKILL included); if it
    died already, while this one was starting (its imports take seconds), end now."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the launcher's cleanup is all there is
        pass
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # reparented: the launcher is gone
        os._exit(1)


@contextlib.contextmanager
def children_ignoring(*stops: signal.Signals) -> Iterator[None]:
    """Child processes started in this block are deaf to `stops` from their first instant, until they call
    `ignore_stops`: a terminal's Ctrl-C, sent to every process of the group, must not end one with a
    traceback while it imports. The stops are blocked in this thread (a mask survives fork and exec, a
    handler does not survive exec), and one that reaches this process meanwhile is held and acted on as the
    block ends: ignoring it here, as this once did, lost a Ctrl-C that came while a fork took its time."""
    resource_tracker.ensure_running()  # a spawned child's first start runs it, and it unblocks both stops
    held: list[int] = []
    handlers = {stop: signal.signal(stop, lambda signum, frame: held.append(signum)) for stop in stops
                if signal.getsignal(stop) is not signal.SIG_IGN}  # one ignored (`cmd &`) stays ignored
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)  # a stop that came meanwhile is delivered: held
        for stop, handler in handlers.items():
            signal.signal(stop, handler)
        if held:  # as this process's own handler would have, now that the children are started
            signal.raise_signal(held[0])


def ignore_stops(*stops: signal.Signals) -> None:
    """The first call of a child started in `children_ignoring`: `stops` ignored for good, and let through
    again (one sent to it while it started is dropped)."""
    for stop in stops:
        signal.signal(stop, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
