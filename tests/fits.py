"""Stand-ins for `core.train.fit_job` that tests inject (`run_search(..., fit=...)`). Module-level, so that
spawned rank processes can import them by name; bind their first arguments with functools.partial. Each
takes what a `Fit` takes: (group, job, cache, on_epoch, on_step)."""

import os
import signal
from dataclasses import fields
from pathlib import Path

import optuna

from unet_opt.core.train import FitResult, fit_job
from unet_opt.parallel.processes import worker_id


def fail_on_call(calls: list, failing: int, error: BaseException, *args):
    """The `failing`-th call (1-based, counted in `calls`) raises `error`; the others train."""
    calls.append(1)
    if len(calls) == failing:
        raise error
    return fit_job(*args)


def always_fail(error: BaseException, *args):
    raise error


def fail_rank_once(mark: str, group, *args):
    """Rank 1 of a group raises mid-trial, once (the mark file says it did); every other fit trains."""
    if group.rank == 1 and not os.path.exists(mark):
        Path(mark).touch()
        raise RuntimeError("rank 1 broke mid-epoch")
    return fit_job(group, *args)


def note_pid_and_train(folder: str, group, *args):
    """Each rank writes its pid into `folder` before training, so a test can find the rank processes."""
    if group.world > 1:
        Path(folder, str(os.getpid())).touch()
    return fit_job(group, *args)


def die(*args):
    """The process dies with SIGKILL where training would start."""
    os.kill(os.getpid(), signal.SIGKILL)


def die_after_first_epoch(group, job, cache, on_epoch, on_step=None):
    def on_epoch_then_die(epoch, metrics, best):
        on_epoch(epoch, metrics, best)
        die()

    return fit_job(group, job, cache, on_epoch_then_die, on_step)


class FitThatActsWhenDrawn(FitResult):
    """A finished fit whose history, read when the trial's curves are drawn, calls `action`: a kill or a
    Ctrl-C that lands while the trial's artifacts are being written."""

    history = property(lambda self: self.action())

    def __init__(self, result: FitResult, action):
        for f in fields(FitResult):
            if f.name != "history":
                setattr(self, f.name, getattr(result, f.name))
        self.action = action


def die_while_logging_artifacts(*args):
    return FitThatActsWhenDrawn(fit_job(*args), die)


def interrupt_while_logging_artifacts(*args):
    def ctrl_c():
        raise KeyboardInterrupt

    return FitThatActsWhenDrawn(fit_job(*args), ctrl_c)


def train_then_raise(group, *args):
    """Every rank trains a whole trial (its RNGs, caches and data all used) and then raises: the ranks are
    all back, and a trial that follows on them must not tell."""
    fit_job(group, *args)
    raise ValueError("every rank failed after training")


def fail_in_a_step(message: str, ranks: tuple[int, ...], group, *args):
    """`ranks` raise RuntimeError(message) in their model's second forward pass, inside training, as running out
    of memory in a step would: DDP's collectives of the failed step may then be issued on one rank and never on
    another. The other ranks train (and wait for the failed ones in their next collective)."""
    from torch.nn.modules.module import register_module_forward_hook

    from unet_opt.core.unet import UNet

    passes = []

    def hook(module, inputs, output):
        if isinstance(module, UNet) and group.rank in ranks:
            passes.append(1)
            if len(passes) == 2:
                raise RuntimeError(message)

    handle = register_module_forward_hook(hook)
    try:
        return fit_job(group, *args)
    finally:
        handle.remove()


def stop_rank_1(group, *args):
    """Rank 1 stops itself (SIGSTOP: hung, or suspended) where training would start; rank 0 waits for it in
    the first collective until the group's timeout."""
    if group.rank == 1:
        os.kill(os.getpid(), signal.SIGSTOP)
    return fit_job(group, *args)


def kill_rank_1(group, *args):
    """Rank 1 dies with SIGKILL where training would start; rank 0 waits for it in the first collective."""
    if group.rank == 1:
        die()
    return fit_job(group, *args)


def stop_after_first_epoch(group, job, cache, on_epoch, on_step=None):
    """Every trial is stopped after its first epoch, as a pruner stops one: it ends PRUNED."""
    def stop(epoch, metrics, best):
        on_epoch(epoch, metrics, best)
        return True

    return fit_job(group, job, cache, stop, on_step)


def end_in_optuna_only_then_die(storage_url: str, mark: str, *args):
    """Once (the mark file says it was done): the trial this process runs is ended FAIL, interrupted, in
    Optuna, as a stopped worker records it, and the process dies with SIGKILL before it ends the MLflow run."""
    if os.path.exists(mark):
        return fit_job(*args)
    Path(mark).touch()
    storage = optuna.storages.get_storage(storage_url)
    study = optuna.load_study(study_name="default", storage=storage)
    ours = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            if t.user_attrs.get("worker") == worker_id()]
    storage.set_trial_user_attr(ours[0]._trial_id, "fail_reason", "interrupted")
    storage.set_trial_state_values(ours[0]._trial_id, optuna.trial.TrialState.FAIL)
    die()


def deaf_to_stops(*args):
    """A worker deaf to stop signals while it trains (stuck in a call that never returns, say): only its
    launcher's kill ends it."""
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, signal.SIG_IGN)
    return fit_job(*args)
