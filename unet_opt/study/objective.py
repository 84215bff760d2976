"""One trial: ask Optuna, sample the space into a trial config, train it through `runs`, record it in
both stores. A trial always ends recorded (COMPLETE, PRUNED or FAIL with its reason); a failing trial
never stops the search, Ctrl-C records it as interrupted and is raised on.
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
from unet_opt.parallel.processes import worker_id
from unet_opt.runs import runner as runs
from unet_opt.study.context import SearchContext
from unet_opt.study.pruning import prune_reason
from unet_opt.study.reconcile import MLFLOW_STATUS
from unet_opt.study.storage import FINISHED, HEARTBEAT_SECONDS, best_value
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


def is_surplus(study: optuna.Study, number: int, target: int) -> bool:
    """Trial `number` is not needed when the trials numbered before it, finished or running, already reach
    `target`. Counting by number settles a race of two workers that both saw room for one more trial."""
    ahead = [t for t in study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)) if t.number < number]
    return len(ahead) >= target


def run_trial(ctx: SearchContext, position: int) -> TrialState | None:
    """One trial, which always ends recorded; None when it turned out to be one too many (another worker
    asked at the same moment) and went back to Optuna's queue as WAITING, to be the first trial that a
    later, larger --trials runs."""
    study, storage = ctx.study, ctx.storage
    trial = study.ask()
    try:
        if is_surplus(study, trial.number, ctx.cfg.search.trials):
            storage.set_trial_state_values(trial._trial_id, TrialState.WAITING)
            return None
        trial.set_user_attr("worker", worker_id())  # a killed worker's trial is found by its pid on this machine,
    except KeyboardInterrupt:  # asked for but not claimed yet: no other worker would ever close it
        if storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
            storage.set_trial_user_attr(trial._trial_id, "fail_reason", "interrupted")
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        raise
    with Heartbeat(storage, trial._trial_id):  # and by its missing heartbeat from any other
        try:
            return train_and_record(ctx, trial, position)
        except KeyboardInterrupt:  # before or after the training, while its run opens or its files are written
            if storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
                trial.set_user_attr("fail_reason", "interrupted")
                study.tell(trial, state=TrialState.FAIL)
                if "mlflow_run_id" in trial.user_attrs:
                    ctx.tracker.end_if_running(trial.user_attrs["mlflow_run_id"], "KILLED",
                                               {"optuna.state": "FAIL", "optuna.state_reason": "interrupted"})
                    ctx.tracker.name_by_state(trial.user_attrs["mlflow_run_id"], trial.number, "interrupted")
            raise
        except Exception as e:  # the tracking store failed around the training: still record the trial
            reason = f"{type(e).__name__}: {redact_url(str(e)).splitlines()[0][:300]}"
            if storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
                trial.set_user_attr("fail_reason", reason)
                study.tell(trial, state=TrialState.FAIL)
            log.warning("trial #%d FAIL  [%s]", trial.number, reason)
            return TrialState.FAIL


def train_and_record(ctx: SearchContext, trial: optuna.Trial, position: int) -> TrialState:
    params = suggest(trial, ctx.cfg.space)
    cfg = ctx.cfg.for_trial(params, trial.number)
    metric = cfg.search.goal.metric
    shown = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
    log.info("trial %d/%d (#%d): %s", position, cfg.search.trials, trial.number, shown)
    run_id = ctx.tracker.start_trial(
        ctx.parent_id, ctx.study.study_name, trial.number, params=cfg.params(),
        tags={"seed": cfg.train.seed, "sampler_seed": cfg.search.seed, "processes": ctx.placement.procs,
              "devices": ctx.placement.describe()})  # `worker` is tagged by start_run
    trial.set_user_attr("mlflow_run_id", run_id)
    spec = runs.RunSpec(cfg, ctx.split, ctx.split_names)

    def report_and_ask(epoch: int, metrics: dict[str, float], best: float | None) -> bool:
        # the pruner sees the trial's best so far, which is what the trial will be scored by:
        # one noisy epoch then cannot get a trial pruned that had already done well
        if best is None:  # no finite value yet: nothing to judge the trial by
            return False
        trial.report(best, epoch)
        return trial.should_prune()

    result, state, value, reason = FitResult(), TrialState.FAIL, None, ""
    try:
        data = ctx.cache.get(cfg.data, cfg.model.depth)  # checked and cached here; other processes read the same cache
        with progress.bar(cfg.train.epochs, f"trial #{trial.number}", "epoch", leave=False) as epochs:
            on_epoch = runs.logging_callback(ctx.tracker, run_id, cfg, f"  #{trial.number}", report_and_ask, epochs)
            result = runs.train(spec, ctx.placement, data, ctx.paths.cache, on_epoch, ctx.fit, ctx.ranks)
        if result.stop_reason == "nan_loss":
            state, reason = TrialState.PRUNED, "nan_loss"
        elif result.stop_reason == "callback":
            rule = prune_reason(ctx.study.pruner)
            state, reason = TrialState.PRUNED, f"pruned after epoch {result.epochs_run}: {rule}"
        else:
            state, value, reason = TrialState.COMPLETE, result.best_metrics[metric], result.stop_reason
    except KeyboardInterrupt:
        finish_trial(ctx, trial, run_id, TrialState.FAIL, None, "interrupted", result, "KILLED")
        log.info("trial #%d interrupted", trial.number)
        raise
    except torch.OutOfMemoryError:
        reason = f"out_of_memory at batch_size={cfg.train.batch_size}"
        torch.cuda.empty_cache()
    except Exception as e:  # a failing trial never kills the search
        reason = f"{type(e).__name__}: {redact_url(str(e))}"
        log.debug("trial %d failed", trial.number, exc_info=True)

    try:
        data = ctx.cache.get(cfg.data, cfg.model.depth)
        runs.record(spec, result, data, ctx.tracker, run_id, ctx.placement.main_device, ctx.writer)
    except Exception as e:
        log.warning("trial %d: could not write its artifacts (%s)", trial.number, e)
    finish_trial(ctx, trial, run_id, state, value, reason, result)
    best = best_value(ctx.study)
    if best is not None:
        ctx.tracker.log_metrics(ctx.parent_id, {"best_value": best}, step=trial.number)
    describe_parent(ctx.study, ctx.tracker, ctx.parent_id, cfg)
    log.info("trial #%d %s%s  [%s]%s", trial.number, state.name,
             f" {metric} {value:.4f} (best epoch {result.best_epoch})" if value is not None else "", reason,
             f"  study best {best:.4f}" if best is not None else "")
    return state


def finish_trial(ctx: SearchContext, trial: optuna.Trial, run_id: str, state: TrialState, value: float | None,
                 reason: str, result: FitResult, mlflow_status: str | None = None) -> None:
    """Record the outcome in both stores: Optuna first (it decides the count), then the MLflow run."""
    for key, v in (("stop_reason" if state != TrialState.FAIL else "fail_reason", reason),
                   ("best_epoch", result.best_epoch), ("epochs_run", result.epochs_run)):
        trial.set_user_attr(key, v)
    ctx.study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    metric = ctx.cfg.search.goal.metric
    if state != TrialState.FAIL and result.best_epoch:  # the trial's value as a column, as Optuna has it
        ctx.tracker.log_metrics(run_id, {f"best_{metric}": result.best_metrics[metric],
                                         "best_epoch": result.best_epoch}, step=result.best_epoch)
    ctx.tracker.set_tags(run_id, {"optuna.state": state.name, "optuna.state_reason": reason})
    if state != TrialState.COMPLETE:  # told apart from complete trials in the runs table as it opens
        shown = "interrupted" if reason == "interrupted" else state.name.lower()
        ctx.tracker.name_by_state(run_id, trial.number, shown)
    ctx.tracker.end(run_id, mlflow_status or MLFLOW_STATUS[state])
