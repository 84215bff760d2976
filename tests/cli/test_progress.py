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
    assert "trial #0 COMPLETE" in err  # and each trial's outcome stays as a line above the bars
    run_search(home, 2, *sets)  # resumed: the bar starts at the trials already done
    err = capsys.readouterr().err
    assert "1/2" in err and "2/2" in err and "trial #0:" not in err


@pytest.mark.slow
def test_elsewhere_the_search_prints_plain_lines(home, capsys):
    run_search(home, 1, 'search.pruner="none"', "space.epochs.low=2", "space.epochs.high=2")
    err = capsys.readouterr().err
    assert "epoch 2/2" in err and "trial #0 COMPLETE" in err
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
