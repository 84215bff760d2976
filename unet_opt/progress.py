"""Live progress on a terminal: trials of a search, epochs of a run, images decoded (tqdm: elapsed
time, rate and ETA). Where stderr is not a terminal (CI, a log file, `2>&1 | tee`) the bars are off and the
log lines say the same, as before."""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import weakref

from tqdm import tqdm


def live() -> bool:
    """Bars on a terminal, from the main process only: `--workers` processes print plain lines, which
    interleave where several bars would overwrite each other."""
    return sys.stderr.isatty() and multiprocessing.current_process().name == "MainProcess"


OPEN_BARS: weakref.WeakSet[tqdm] = weakref.WeakSet()


def refresh() -> None:
    """Redraw every open bar: the trials bar's elapsed time and ETA move on with each epoch, not only when
    a trial ends."""
    for shown in list(OPEN_BARS):
        if not shown.disable:  # closed
            shown.refresh()


def bar(total: int, desc: str, unit: str, initial: int = 0, leave: bool = True) -> tqdm:
    """A progress bar on stderr; one that does nothing when the output is not live."""
    on = live()
    try:
        sized = on and min(os.get_terminal_size(sys.stderr.fileno())) > 0  # a bare pty reports 0x0: bars hidden
    except (OSError, ValueError):  # a stream with no terminal behind it
        sized = False
    shown = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, disable=not on, file=sys.stderr,
                 dynamic_ncols=sized, ncols=None if sized else 100, nrows=None if sized else 24,
                 bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]")
    if on:
        OPEN_BARS.add(shown)
    return shown


def line_level() -> int:
    """The level of lines that a live bar shows instead (one per epoch): seen with -v only, then."""
    return logging.DEBUG if live() else logging.INFO


class BarSafeHandler(logging.StreamHandler):
    """Log lines printed above any live bars instead of through them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)
