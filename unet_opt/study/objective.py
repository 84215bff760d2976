"""One trial: ask Optuna, sample the space into a trial config, train it through the worker's `Runner`,
record it in both stores through the study's `TrialLedger`. A trial always ends recorded (COMPLETE, PRUNED
or FAIL with its reason); a failing trial never stops the search, Ctrl-C records it as interrupted and is
raised on.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from unet_opt import progress
from unet_opt.config.paths import redact_url
from unet_opt.config.schema import Param
from unet_opt.core.train import FitResult
from unet_opt.parallel.ranks import RankFailed
from unet_opt.runs.runner import RunSpec, logging_callback
from unet_opt.study.context import SearchContext
from unet_opt.study.ledger import Outcome
from unet_opt.study.pruning import prune_reason
from unet_opt.study.storage import HEARTBEAT_SECONDS, best_value
from unet_opt.study.summary import describe_parent

log = logging.getLogger(__name__)


def suggest(trial: optuna.Trial, space: dict[str, Param]) -> dict[str, Any]:
    """The space file's params -> `suggest_*` calls -> {"train.lr": 0.003, ...}."""
    values = {}
    for name, p in space.items():
        if p.type == "float":
            values[name] = trial.suggest_float(name, p.low, p.high, step=p.step, log=p.log)
        elif p.type == "int":
            values[name] = trial.suggest_int(name, p.low, p.high, step=p.step or 1, log=p.log)
        else:
            values[name] = trial.suggest_categorical(name, list(p.choices))
    return values


class Heartbeat:
    """Records the trial's heartbeat in the storage while it runs, so a killed worker's trial is found."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int):
        self.storage, self.trial_id, self.stop = storage, trial_id, threading.Event()
        self.thread = threading.Thread(target=self.beat, daemon=True)

    def beat(self) -> None:
        while not self.stop.is_set():
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as e:  # a missed beat is not worth killing the trial over
                log.debug("heartbeat failed: %s", e)
            self.stop.wait(HEARTBEAT_SECONDS)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def run_trial(ctx: SearchContext, position: int) -> TrialState | None:
    """One trial, which always ends recorded; None when it turned out to be one too many (see
    `TrialLedger.ask`)."""
    trial = ctx.ledger.ask(ctx.cfg.search.trials)
    if trial is None:
        return None
    try:  # from the claim on (a stop as its heartbeat starts too: the trial is not left to look dead)
        with Heartbeat(ctx.ledger.storage, trial._trial_id):  # a killed worker's trial is found by its missing beat
            return train_and_record(ctx, trial, position)
    except KeyboardInterrupt as stop:  # before or after the training, while its run opens or its files are written
        ctx.ledger.interrupted(trial, stop)
        raise
    except Exception as e:  # the tracking store failed around the training: still record the trial
        reason = f"{type(e).__name__}: {redact_url(str(e)).splitlines()[0][:300]}"
        ctx.ledger.fail(trial, reason)
        log.warning("trial #%d fail  [%s]", trial.number, reason)
        return TrialState.FAIL


def train_and_record(ctx: SearchContext, trial: optuna.Trial, position: int) -> TrialState:
    params = suggest(trial, ctx.cfg.space)
    cfg = ctx.cfg.for_trial(params, trial.number)
    metric, runner = cfg.search.goal.metric, ctx.runner
    shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
    log.info("trial %d/%d (#%d): %s", position, cfg.search.trials, trial.number, shown or f"seed {cfg.train.seed}")
    run_id = ctx.ledger.open_run(trial, cfg.params(), {  # `worker` is tagged by start_run
        "seed": cfg.train.seed, "sampler_seed": cfg.search.seed, "processes": runner.placement.procs,
        "devices": runner.placement.describe()})
    spec = RunSpec(cfg, ctx.split, ctx.split_names, name=f"trial #{trial.number}")

    def report_and_ask(epoch: int, metrics: dict[str, float], best: float | None) -> bool:
        # the pruner sees the trial's best so far, which is what the trial will be scored by:
        # one noisy epoch then cannot get a trial pruned that had already done well
        if best is None:  # no finite value yet: nothing to judge the trial by
            return False
        trial.report(best, epoch)
        return trial.should_prune()

    result = FitResult()
    try:
        with progress.bar(cfg.train.epochs, f"trial #{trial.number}", "epoch", leave=False,
                          fractional=True) as epochs:
            on_epoch = logging_callback(runner.tracker, run_id, cfg, f"  #{trial.number}", report_and_ask, epochs)
            result = runner.train(spec, on_epoch, progress.steps_of(epochs))
        outcome = outcome_of(result, metric, ctx.study.pruner)
    except KeyboardInterrupt as stop:
        ctx.ledger.interrupted(trial, stop, (result.best_epoch, result.epochs_run))
        log.info("trial #%d interrupted", trial.number)
        raise
    except Exception as e:  # a failing trial never kills the search
        outcome = Outcome(TrialState.FAIL, failure_reason(e, cfg.train.batch_size))
        if isinstance(e, torch.OutOfMemoryError):
            torch.cuda.empty_cache()
        log.debug("trial %d failed", trial.number, exc_info=True)

    try:  # figures where they pay: a complete trial's; a pruned one's are drawn on demand (`unet-opt figures`)
        runner.record(spec, result, run_id, figures=outcome.state == TrialState.COMPLETE, stop_reason=outcome.reason)
    except Exception as e:
        log.warning("trial %d: could not write its artifacts (%s)", trial.number, e)
    value_columns = {f"best_{metric}": result.best_metrics[metric], "best_epoch": result.best_epoch} \
        if outcome.state != TrialState.FAIL and result.best_epoch else {}  # the trial's value, as Optuna has it
    ctx.ledger.finish(trial, outcome, value_columns)
    best = best_value(ctx.study)
    if best is not None:
        runner.tracker.log_metrics(ctx.ledger.parent_id, {"best_value": best}, step=trial.number)
    describe_parent(ctx.study, runner.tracker, ctx.ledger.parent_id, cfg)
    reached = outcome.value if outcome.value is not None else value_columns.get(f"best_{metric}")
    log.info("trial #%d %s%s  [%s]%s", trial.number, outcome.state.name.lower(),  # one vocabulary: states.py
             f" {metric} {reached:.4f} (best epoch {result.best_epoch})" if reached is not None else "",
             outcome.reason, f"  study best {best:.4f}" if best is not None else "")
    return outcome.state


def failure_reason(error: Exception, batch_size: int) -> str:
    """A failed trial's reason. Out of memory reads the same whether the trial ran here or on rank
    processes (whose error comes back as RankFailed), so that such trials are found by one reason."""
    if isinstance(error, torch.OutOfMemoryError) or (isinstance(error, RankFailed) and error.out_of_memory):
        return f"out_of_memory at batch_size={batch_size}"
    return f"{type(error).__name__}: {redact_url(str(error))}"


def outcome_of(result: FitResult, metric: str, pruner: optuna.pruners.BasePruner) -> Outcome:
    """A trial's ending, from how its training stopped: COMPLETE with its best epoch's value, or PRUNED."""
    epochs = {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run}
    if result.stop_reason == "nan_loss":
        return Outcome(TrialState.PRUNED, "nan_loss", **epochs)
    if result.stop_reason == "callback":
        return Outcome(TrialState.PRUNED, f"pruned after epoch {result.epochs_run}: {prune_reason(pruner)}", **epochs)
    return Outcome(TrialState.COMPLETE, result.stop_reason, result.best_metrics[metric], **epochs)
