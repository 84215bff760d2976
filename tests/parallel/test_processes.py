"""Children started deaf to stop signals, without the launcher losing a stop that comes meanwhile."""

import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest

from unet_opt.parallel.processes import children_ignoring, ignore_stops


@pytest.fixture
def stop_handlers():
    """Python's own Ctrl-C handler for the test (an earlier test's CLI call may have left the tool's, which
    would remember the stop for later tests), and this process's handlers as they were afterwards."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)


def test_a_stop_that_comes_while_children_start_is_acted_on_once_they_are_started(stop_handlers):
    # the launcher used to ignore stops while it forked: a Ctrl-C in those (sometimes long) moments was lost,
    # and the search ran on to its end
    block_ran_to_its_end = False
    with pytest.raises(KeyboardInterrupt):
        with children_ignoring(signal.SIGINT, signal.SIGTERM):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            block_ran_to_its_end = True  # not raised inside the block: the start is never cut in half
    assert block_ran_to_its_end


def test_a_stop_handler_of_the_launcher_s_own_gets_the_held_stop_and_an_ignored_one_stays_ignored(stop_handlers):
    got = []
    signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a shell's background job
    with children_ignoring(signal.SIGINT, signal.SIGTERM):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        assert got == []
    assert got == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert not signal.pthread_sigmask(signal.SIG_BLOCK, [])  # nothing left blocked


def child(ready, go) -> None:
    ready.set()
    go.wait(10)  # the launcher's Ctrl-C comes now, before the child's own first call
    ignore_stops(signal.SIGINT, signal.SIGTERM)
    time.sleep(0.2)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_child_started_in_the_block_survives_stops_sent_before_and_after_it_ignores_them(stop_handlers, method):
    context = multiprocessing.get_context(method)
    ready, go = context.Event(), context.Event()
    with children_ignoring(signal.SIGINT, signal.SIGTERM):
        process = context.Process(target=child, args=(ready, go))
        process.start()
    assert ready.wait(60)
    os.kill(process.pid, signal.SIGINT)  # as it starts (a spawned one imports for seconds)
    os.kill(process.pid, signal.SIGTERM)
    go.set()
    time.sleep(0.05)
    os.kill(process.pid, signal.SIGINT)  # and once it ignores them
    process.join(30)
    assert process.exitcode == 0


def test_the_first_spawned_child_of_a_process_is_deaf_to_a_ctrl_c_while_it_starts():
    """Python's resource tracker, started by a process's first spawned child, unblocked the stops as it
    started: `--procs 2` ranks still importing torch printed tracebacks, or aborted, on a terminal's Ctrl-C.
    In a new interpreter, where no tracker runs yet; the child sleeps without ever ignoring the stop."""
    source = ("import multiprocessing, os, signal, time\n"
              "from unet_opt.parallel.processes import children_ignoring\n"
              "context = multiprocessing.get_context('spawn')\n"
              "with children_ignoring(signal.SIGINT):\n"
              "    child = context.Process(target=time.sleep, args=(2,))\n"
              "    child.start()\n"
              "time.sleep(0.3)\n"
              "os.kill(child.pid, signal.SIGINT)\n"
              "child.join()\n"
              "print(child.exitcode)\n")
    done = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["0"], done.stderr
