"""Live progress on a terminal: trials of a search, epochs of a run, images decoded (tqdm: elapsed
time, rate and ETA). Where stderr is not a terminal (CI, a log file, `2>&1 | tee`) the bars are off and the
log lines say the same, as before."""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import sys
import weakref
from collections.abc import Callable

from tqdm import tqdm


def live() -> bool:
    """Bars on a terminal, from the main process only: `--workers` processes print plain lines, which
    interleave where several bars would overwrite each other. None with -q (only warnings are shown)."""
    return (sys.stderr is not None and sys.stderr.isatty() and os.environ.get("TERM") != "dumb"  # no cursor moves
            and multiprocessing.current_process().name == "MainProcess"
            and logging.getLogger("unet_opt").getEffectiveLevel() <= logging.INFO)


OPEN_BARS: weakref.WeakSet[tqdm] = weakref.WeakSet()


def refresh() -> None:
    """Redraw every open bar: the trials bar's elapsed time and ETA move on with each epoch, not only when
    a trial ends."""
    for shown in list(OPEN_BARS):
        if not shown.disable:  # closed
            shown.refresh()


def bar(total: int, desc: str, unit: str, initial: int = 0, leave: bool = True, fractional: bool = False,
        smoothing: float = 0.3) -> tqdm:
    """A progress bar on stderr; one that does nothing when the output is not live. A `fractional` one
    (epochs, moved through each epoch by `steps_of`) shows its count to a tenth: "3.4/40". `smoothing`: 0
    for an ETA from the average rate since the bar opened, tqdm's 0.3 weighs the latest updates most."""
    on = live()
    try:
        sized = on and min(os.get_terminal_size(sys.stderr.fileno())) > 0  # a bare pty reports 0x0: bars hidden
    except (OSError, ValueError):  # a stream with no terminal behind it
        sized = False
    shown = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, disable=not on, file=sys.stderr,
                 smoothing=smoothing,
                 dynamic_ncols=sized, ncols=None if sized else 100, nrows=None if sized else 24,
                 bar_format=f"{{l_bar}}{{bar}}| {'{n:.1f}' if fractional else '{n_fmt}'}/{{total_fmt}} "
                            "[{elapsed}<{remaining}{postfix}]")
    if on:
        OPEN_BARS.add(shown)
    return shown


def steps_of(epochs: tqdm) -> Callable[[int, int], None] | None:
    """Moves a live bar of epochs through each epoch as its steps are done: on real data an epoch takes
    minutes, and a bar that moved only at epoch ends would look frozen. None where the bar is off."""
    if epochs.disable:
        return None

    def on_step(done: int, steps: int) -> None:
        whole = math.floor(epochs.n)  # the epochs done; set to a whole number at each epoch's end
        epochs.update(whole + done / max(steps, 1) - epochs.n)  # update(): redrawn a few times a second at most

    return on_step


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
