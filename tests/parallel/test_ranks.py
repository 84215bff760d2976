"""Rank processes kept across trials: reused after a trial that failed on every rank, restarted after one
died, and never left behind."""

import os
import signal
import subprocess
import sys
import tempfile
from datetime import timedelta
from functools import partial
from pathlib import Path

import fits
import pytest
from conftest import children_of, run_search, wait_until

from unet_opt.config.schema import Config, DataConfig, ModelConfig, TrainConfig
from unet_opt.core.data import DataCache, make_split, split_indices
from unet_opt.core.train import FitJob, fit_job
from unet_opt.parallel.placement import Placement
from unet_opt.parallel.ranks import (
    RENDEZVOUS_PREFIX,
    RankFailed,
    RankGroup,
    broke_the_group,
    launch,
    remove_stale_rendezvous,
)

TWO = Placement("cpu", 2, threads=1)


def trial_job(lr: float = 0.01, epochs: int = 2) -> FitJob:
    cfg = Config(data=DataConfig(synthetic_images=24, image_size=32, augment="crop"),
                 model=ModelConfig(base_channels=8, depth=3),
                 train=TrainConfig(lr=lr, batch_size=4, epochs=epochs, patience=9))
    names = [f"{i:05d}" for i in range(24)]
    split = split_indices(make_split(names, 0.15, 0.15, 0), names)
    return FitJob(cfg, {"train": split["train"], "val": split["val"]})


def curves(result) -> list[float]:
    return [h[key] for h in result.history for key in ("train_loss", "val_loss", "val_dice")]


def is_running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_a_trial_after_a_failed_one_on_the_same_ranks_gives_what_fresh_ranks_give():
    epochs, steps = [], []
    with RankGroup(TWO, DataCache(None)) as ranks:
        with pytest.raises(RankFailed, match="ValueError: every rank failed after training"):
            ranks.run(fits.train_then_raise, trial_job(lr=0.05), None)
        pids = ranks.pids
        assert len(pids) == 2 and ranks.starts == 1  # every rank came back: the group stays
        reused = ranks.run(fit_job, trial_job(), lambda epoch, metrics, best: epochs.append(epoch) or False,
                           lambda done, total: steps.append((done, total)))
        assert ranks.pids == pids and ranks.starts == 1
        assert reused.model is not None and epochs == [1, 2]  # rank 0 still relays its epochs
        per_epoch = len(trial_job().split["train"]) // 4  # global batches of 4 (2 images on each rank)
        assert steps.count((per_epoch, per_epoch)) == 2 and steps[-1] == (per_epoch, per_epoch)  # and its steps
    fresh = launch(TWO, fit_job, trial_job(), None, DataCache(None))
    assert curves(reused) == curves(fresh)  # the same processes, ops and order of sums: the same bits
    assert children_of(os.getpid()) == []


@pytest.mark.slow
def test_a_trial_that_failed_on_every_rank_inside_a_step_gets_new_ranks_for_the_next():
    # an error amid DDP's collectives (out of memory in a step) can leave one rank's bucket reduction unmatched:
    # reused, the group would pair it with the next trial's first collective (a hang, or wrong sums)
    with RankGroup(TWO, DataCache(None)) as ranks:
        with pytest.raises(RankFailed, match="out of memory in a training step") as failed:
            ranks.run(partial(fits.fail_in_a_step, "out of memory in a training step", (0, 1)), trial_job(), None)
        assert not failed.value.intact and ranks.pids == []
        result = ranks.run(fit_job, trial_job(), None)
        assert result.epochs_run == 2 and ranks.starts == 2
    assert children_of(os.getpid()) == []


@pytest.mark.slow
def test_a_rank_failing_alone_in_words_of_the_network_is_named_and_not_the_rank_waiting_for_it():
    # a review: only a timed-out wait means the silent rank is at fault; this rank failed on its own at once
    error = "NCCL error in: ProcessGroupNCCL.cpp: unhandled cuda error, could not open connection"
    with RankGroup(TWO, DataCache(None)) as ranks:
        with pytest.raises(RankFailed, match=f"^rank 1 failed: RuntimeError: {error}$"):
            ranks.run(partial(fits.fail_in_a_step, error, (1,)), trial_job(), None)
    assert children_of(os.getpid()) == []


@pytest.mark.slow
def test_a_rank_that_stops_answering_is_named_not_the_rank_that_waited_for_it():
    # the timeout also bounds the ranks' meeting as they start: 10 s leaves a loaded machine time to import torch
    with RankGroup(TWO, DataCache(None), timeout=timedelta(seconds=10)) as ranks:
        with pytest.raises(RankFailed, match="^rank 1 stopped answering \\(hung or suspended\\): rank 0 gave up "
                                             "waiting for it in a collective after 10 s: ") as failed:
            ranks.run(fits.stop_rank_1, trial_job(), None)
        assert "imed out" in str(failed.value) and ranks.pids == []  # gloo's own words follow; the stopped one killed
    assert children_of(os.getpid()) == []


@pytest.mark.slow
def test_a_killed_rank_fails_its_trial_and_the_next_trial_gets_new_ranks():
    with RankGroup(TWO, DataCache(None)) as ranks:
        with pytest.raises(RankFailed, match="rank 1 died \\(killed by SIGKILL\\)"):
            ranks.run(fits.kill_rank_1, trial_job(), None)
        assert ranks.pids == [] and children_of(os.getpid()) == []  # rank 0, stuck in a collective, went too
        result = ranks.run(fit_job, trial_job(), None)
        assert result.epochs_run == 2 and ranks.starts == 2
    assert children_of(os.getpid()) == []


@pytest.mark.slow
def test_a_search_starts_its_ranks_once_for_all_its_trials(home, tmp_path_factory):
    pids = tmp_path_factory.mktemp("pids")  # each rank notes its pid in every trial
    run_search(home, 3, 'search.pruner="none"', fit=partial(fits.note_pid_and_train, str(pids)), procs=2)
    assert len(list(pids.iterdir())) == 2  # 3 trials, the same 2 processes
    assert children_of(os.getpid()) == []  # ranks and the artifact writer are gone once the search returns
    artifacts = sorted(p.name for p in Path(home, "mlruns", "artifacts").rglob("*.png"))
    assert artifacts.count("learning_curves.png") == 3  # every trial's files, drawn in the background


def test_a_killed_launcher_s_rendezvous_folder_is_removed_by_the_next_group(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"unet-opt-ranks-{dead.stdout.strip()}-abc"
    mine = tmp_path / f"unet-opt-ranks-{os.getpid()}-def"  # a live launcher's (this test's) is kept
    for folder in (stale, mine):
        folder.mkdir()
        (folder / "store").touch()
    remove_stale_rendezvous()
    assert not stale.exists() and mine.exists()


@pytest.mark.slow
def test_a_rank_whose_launcher_died_while_it_was_starting_ends(tmp_path):
    # the parent-death signal is asked for only once a rank's imports are done: a launcher killed
    # before that must not leave the rank waiting for it for ever
    script = tmp_path / "launcher.py"
    script.write_text("import time\nfrom unet_opt.parallel.placement import Placement\n"
                      "from unet_opt.parallel.ranks import RankGroup\n"
                      "from unet_opt.core.data import DataCache\n"
                      "if __name__ == '__main__':\n"
                      "    RankGroup(Placement('cpu', 2, threads=1), DataCache(None), start=True)\n"
                      "    time.sleep(600)\n")
    launcher = subprocess.Popen([sys.executable, str(script)])

    def rank_pids() -> list[int]:
        pids = [int(c.split()[0]) for c in children_of(launcher.pid, with_pid=True)]
        return pids if len(pids) == 2 else []

    ranks = wait_until(rank_pids, every=0.01)
    assert ranks, "the ranks never started"
    os.kill(ranks[1], signal.SIGSTOP)  # held before it gets far into its imports
    # rank 0 gets ready (imported, its parent-death signal asked for) and opens the rendezvous's store
    store = f"{RENDEZVOUS_PREFIX}{launcher.pid}-*/store"
    assert wait_until(lambda: list(Path(tempfile.gettempdir()).glob(store))), "rank 0 never reached the rendezvous"
    launcher.kill()  # rank 0 dies with it
    launcher.wait()
    os.kill(ranks[1], signal.SIGCONT)  # rank 1 would wait for rank 0 in the rendezvous (for 10 minutes)
    assert wait_until(lambda: not any(is_running(pid) for pid in ranks), every=0.2)


def test_errors_of_the_process_group_itself_restart_it():
    # gloo reports a timed-out collective as a plain RuntimeError: such a group is out of step for good
    timeout = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Timed out waiting 600000ms")
    closed = RuntimeError("Application timeout caused pair closure")
    assert broke_the_group(timeout) and broke_the_group(closed)
    assert not broke_the_group(ValueError("every rank failed after training"))
    assert not broke_the_group(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))


def test_out_of_memory_on_a_rank_is_told_in_torch_s_words_or_nccl_s():
    assert RankFailed("rank 1 failed: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB").out_of_memory
    assert RankFailed("rank 1 failed: RuntimeError: NCCL error in: ProcessGroupNCCL.cpp: unhandled cuda error, "
                      "Cuda failure 'out of memory'").out_of_memory
    assert not RankFailed("rank 1 died (killed by SIGKILL)").out_of_memory


@pytest.mark.slow
def test_a_terminal_s_ctrl_c_while_the_ranks_import_does_not_end_them():
    """A terminal's Ctrl-C reaches every process of the group; a rank used to ignore it only once it had
    imported torch, and one still importing ended with a traceback."""
    with RankGroup(TWO, DataCache(None), start=True) as ranks:
        for pid in ranks.pids:  # they are importing torch now
            os.kill(pid, signal.SIGINT)
        result = ranks.run(fit_job, trial_job(), None)
        assert result.epochs_run == 2 and ranks.starts == 1
    assert children_of(os.getpid()) == []


def test_a_zombie_counts_as_dead_for_what_the_dead_left():
    # a killed writer whose parent has not waited for it (a subreaper's child) still has its /proc entry:
    # its spooled reports were never adopted
    from unet_opt.parallel.processes import is_running

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert is_running(child.pid)
    child.kill()
    assert wait_until(lambda: not is_running(child.pid), timeout=10)  # a zombie until waited for
    assert Path(f"/proc/{child.pid}").exists()
    child.wait()
