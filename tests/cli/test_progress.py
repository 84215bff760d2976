"""The terminal: live bars on a TTY, the same facts as plain lines everywhere else."""

import pytest
from conftest import run_search

from unet_opt import progress


@pytest.fixture
def terminal(monkeypatch):
    monkeypatch.setattr(progress, "live", lambda: True)


@pytest.mark.slow
def test_a_search_on_a_terminal_shows_trials_and_epochs_as_bars(home, capsys, terminal):
    sets = ('search.pruner="none"', "space.epochs.low=2", "space.epochs.high=2")
    run_search(home, 1, *sets)
    err = capsys.readouterr().err
    assert "trials: 100%" in err and "1/1" in err  # trials done / target, with elapsed time and ETA
    assert "trial #0: 100%" in err and "val_dice" in err  # the running trial's epochs and its score
    assert "epoch 1/2" not in err  # the bar replaces the per-epoch lines
    assert "trial #0 complete" in err  # and each trial's outcome stays as a line above the bars
    run_search(home, 2, *sets)  # resumed: the bar starts at the trials already done
    err = capsys.readouterr().err
    assert "1/2" in err and "2/2" in err and "trial #0:" not in err


@pytest.mark.slow
def test_elsewhere_the_search_prints_plain_lines(home, capsys):
    run_search(home, 1, 'search.pruner="none"', "space.epochs.low=2", "space.epochs.high=2")
    err = capsys.readouterr().err
    assert "epoch 2/2" in err and "trial #0 complete" in err
    assert "%|" not in err and "\r" not in err


def test_each_epoch_redraws_every_open_bar_and_none_that_closed(terminal, monkeypatch):
    drawn = []
    monkeypatch.setattr(progress.tqdm, "refresh", lambda self, *args, **kwargs: drawn.append(self.desc))
    with progress.bar(3, "trials", "trial"), progress.bar(5, "trial #0", "epoch"):
        drawn.clear()  # what tqdm draws by itself when a bar opens
        progress.refresh()  # the trials bar's clock moves while a trial runs, not only when it ends
        assert sorted(drawn) == ["trial #0", "trials"]
    drawn.clear()
    progress.refresh()
    assert drawn == []


def test_an_epoch_bar_moves_through_each_epoch_with_its_steps(terminal, capsys):
    with progress.bar(4, "trial #0", "epoch", fractional=True) as epochs:
        on_step = progress.steps_of(epochs)
        for done in (1, 2, 3):
            on_step(done, 4)
            epochs.refresh()
            assert epochs.n == pytest.approx(done / 4)
        on_step(4, 4)
        epochs.n = 1  # the epoch's end, as the epoch callback sets it
        on_step(2, 4)
        epochs.refresh()
        assert epochs.n == pytest.approx(1.5)
    assert "1.5/4" in capsys.readouterr().err  # its count to a tenth, not 1.5000000000000002


class Terminal:
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("term, shown", [("xterm-256color", True), ("dumb", False)])
def test_a_dumb_terminal_gets_plain_lines_not_bars(monkeypatch, term, shown):
    # Emacs' shell and some CI consoles set TERM=dumb: a bar's cursor moves are garbage there
    monkeypatch.setattr("sys.stderr", Terminal())
    monkeypatch.setenv("TERM", term)
    assert progress.live() is shown


def test_no_step_callback_where_the_bar_is_off():
    with progress.bar(4, "trial #0", "epoch", fractional=True) as epochs:  # stderr is not a terminal here
        assert progress.steps_of(epochs) is None


def test_the_trials_bar_s_eta_counts_pruned_and_complete_trials_at_their_average(terminal):
    clock = [0.0]
    with progress.bar(10, "trials", "trial", initial=2, smoothing=0) as trials:  # two done before this command
        trials._time, trials.start_t, trials.last_print_t = (lambda: clock[0]), 0.0, 0.0
        for seconds in (70, 10, 10, 10):  # one complete trial, then three pruned ones
            clock[0] += seconds
            trials.update(1)
        shown = str(trials)
    assert "6/10" in shown and "[01:40<01:40" in shown  # 4 trials left at the 25 s these 4 took on average
