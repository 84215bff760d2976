"""Servers run for the user (`unet-opt ui`: the MLflow UI and the live view of a study), each in a process
group of its own, until one of them stops or a Ctrl-C or SIGTERM stops them all, with everything they
started. What they print is passed on line by line, but for the lines known as noise (notices about their
own settings, one line per request)."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from unet_opt.errors import UserError


@dataclass(frozen=True)
class Server:
    name: str  # as a user calls it: "the MLflow UI"
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)  # added to this process's environment
    noise: tuple[str, ...] = ()  # a line holding any of these is not shown


def serve(servers: list[Server], start: Callable[..., subprocess.Popen] = subprocess.Popen,
          poll_seconds: float = 0.5) -> int:
    """Run `servers` until one stops on its own (an `error:` line, and its exit code, or 1 where it gave none)
    or Ctrl-C / SIGTERM stop them all (raised on)."""
    processes = []
    try:
        for server in servers:
            process = start(server.command, env={**os.environ, **server.env}, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            processes.append(process)
            if process.stdout is not None:
                threading.Thread(target=pass_on, args=(process.stdout, server.noise), daemon=True).start()
        while all(p.poll() is None for p in processes):
            time.sleep(poll_seconds)
        server, code = next((s, p.returncode) for s, p in zip(servers, processes) if p.returncode is not None)
        time.sleep(poll_seconds)  # its last lines are passed on before the verdict
        sys.stderr.write(f"error: {server.name} stopped on its own (exit code {code}); see its lines above\n")
        return code if code > 0 else 1  # 0 is no success here, and a signal's death (-9) no exit code
    finally:  # one stopped, or Ctrl-C, or SIGTERM through the CLI's handler: the others go too
        for process in processes:
            stop_group(process)


def pass_on(lines, noise: tuple[str, ...]) -> None:
    for line in lines:
        if not any(word in line for word in noise):
            sys.stderr.write(line)


def stop_group(server: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM to the server's process group; after `grace` seconds, SIGKILL to whatever is left of it."""
    if server.poll() is not None and not group_alive(server.pid):
        return
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return
    try:
        os.killpg(server.pid, signal.SIGKILL)  # workers that outlived the server
    except ProcessLookupError:
        pass
    server.wait()


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def check_port(host: str, port: int, option: str = "--port") -> None:
    """The address can be listened on now: a server would fail on a busy port only after a while."""
    with socket.socket() as probe:
        # as the servers themselves bind (uvicorn, wsgiref): a port whose last server stopped a moment ago,
        # and whose closed connections wait out TIME_WAIT, is free to them; only a listener makes it busy
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}); pass an address of this machine "
                                f"with --host (127.0.0.1, or 0.0.0.0 for every interface)") from None
            raise UserError(f"port {port} on {host} is in use (another `unet-opt ui`?); pass another {option}") from None


def local_base(host: str, port: int) -> str:
    """The address a browser on this machine opens a server listening on `host` at."""
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"

