"""`run_search(cfg, paths)`: run trials until the study has `search.trials` finished ones.

Everything checkable is checked first (placement, batch split, data); then the stores are opened, the
study is created or joined, and one worker (here) or `--workers K` processes run the trial loop.
Ctrl-C ends the running trial as interrupted; the summary is returned either way.
"""

from __future__ import annotations

import logging
import shlex
import time
from pathlib import Path

import optuna

from unet_opt.config.paths import Paths, check_store, redact_url
from unet_opt.config.schema import Config
from unet_opt.core.data import DataCache, check_splittable
from unet_opt.core.encoders import check_pretrained
from unet_opt.core.train import fit_on_ranks
from unet_opt.errors import Terminated
from unet_opt.parallel.placement import Placement, check_divisible, plan
from unet_opt.parallel.processes import worker_id
from unet_opt.runs.runner import Fit
from unet_opt.study.context import SearchContext
from unet_opt.study.loop import close_stale_trials, work
from unet_opt.study.reconcile import check_stores_agree, close_runs_of_ended_trials, finish_parent
from unet_opt.study.storage import count_finished, join_or_create_study, open_storage, study_name
from unet_opt.study.summary import Summary, fill_summary, log_study_artifacts
from unet_opt.study.workers import WorkerPlan, run_workers
from unet_opt.tracking.tracker import Tracker
from unet_opt.tracking.ui import how_to_open

log = logging.getLogger(__name__)


def batch_sizes(cfg: Config) -> list[int]:
    p = cfg.space.get("train.batch_size")
    return (p.values() or []) if p is not None else [cfg.train.batch_size]


def ui_command_line(paths: Paths, cfg: Config) -> str:
    """`unet-opt ui` as this search's user must type it to see the same store."""
    words = ["unet-opt"]
    if paths.home != Path.cwd().resolve():
        words += ["--home", shlex.quote(str(paths.home))]
    words.append("ui")
    if cfg.search.tracking_uri:
        words += ["--tracking-uri", shlex.quote(redact_url(cfg.search.tracking_uri))]
    return " ".join(words)


def run_search(cfg: Config, paths: Paths, placement: Placement | None = None, workers: int = 1,
               verbose: bool = False, fit: Fit = fit_on_ranks) -> Summary:
    """Run trials until the study has `cfg.search.trials` finished ones (or the timeout passes).

    `placement`: the processes/GPUs each trial trains on; `workers`: trials run at once on this machine,
    each worker a process with its own share of the devices, all on the one study and parent run.
    `fit` trains one trial on each rank (tests hand in a stand-in).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = study_name(cfg)
    placement = placement or plan(cfg.train.device, None, None)  # `--device cuda` without a GPU fails here
    placements = placement.split(workers) if workers > 1 else [placement]
    check_divisible(batch_sizes(cfg), placements[0].procs)
    check_splittable(cfg.data)  # before the cache is filled
    check_pretrained(cfg.values_of("model.encoder"), cfg.model.pretrained)
    tracking_uri = paths.tracking_uri(cfg.search.tracking_uri)
    check_store(paths.storage_url(cfg.search.storage), "--storage", "studies", "an Optuna study storage")
    check_store(tracking_uri, "--tracking-uri", "experiments", "an MLflow store")
    cache = DataCache(paths.cache)
    names = cache.get(cfg.data, cfg.model.depth).names  # bad data fails here, before anything else
    if tracking_uri.startswith("sqlite"):  # a server is checked first, so that an unreachable one leaves no files
        storage = open_storage(paths.storage_url(cfg.search.storage))
        tracker = Tracker(tracking_uri, name, paths.artifacts)
    else:
        tracker = Tracker(tracking_uri, name, paths.artifacts)
        storage = open_storage(paths.storage_url(cfg.search.storage))

    check_stores_agree(storage, paths.storage_url(cfg.search.storage), tracker, name)
    search_params = {"space": cfg.source, "data": cfg.data.dataset, "sampler": cfg.search.sampler,
                     "pruner": cfg.search.pruner, "brackets": cfg.search.brackets, "metric": cfg.search.metric,
                     "seed": cfg.search.seed, "startup_trials": cfg.search.startup_trials}
    study, cfg = join_or_create_study(storage, cfg, name, names, tracker, search_params)
    close_stale_trials(study, storage, tracker)  # the two stores made to agree after any kill
    close_runs_of_ended_trials(study, tracker)
    tracker.fail_runs_of_dead_processes()
    tracker.save_ranked_view(cfg.search.goal.metric, list(cfg.space))
    summary = Summary(name, cfg.search.trials, {}, None, tracking_uri=redact_url(tracking_uri),
                      metric=cfg.search.goal.metric,
                      ui=how_to_open(ui_command_line(paths, cfg), tracking_uri, tracker.experiment_id))
    if count_finished(study) >= cfg.search.trials:
        summary.already_done = True
        finish_parent(study, tracker, study.user_attrs["mlflow_parent_run_id"], cfg)
        return fill_summary(summary, study)

    parent_id = tracker.open_parent(study.user_attrs.get("mlflow_parent_run_id"), name, search_params)
    study.set_user_attr("mlflow_parent_run_id", parent_id)
    summary.parent_run_id = parent_id
    deadline = time.time() + cfg.search.timeout if cfg.search.timeout else float("inf")
    trials_before = len(study.get_trials(deepcopy=False))
    ours = [worker_id()]  # this process's and its workers' ids (host:pid), to count the trials run here
    if workers > 1:
        log.info("%d workers, each training its trials on %s", workers, placements[0].describe())
    elif placement.procs > 1:
        log.info("each trial trains on %s", placement.describe())
    try:
        if workers == 1:
            ctx = SearchContext.build(cfg, paths, study, storage, tracker, parent_id, placement, deadline,
                                      cache, fit)
            with ctx:
                outcome = work(ctx)
        else:
            outcome = run_workers(WorkerPlan(cfg, paths, parent_id, deadline, verbose, fit), placements, ours)
        summary.failed_out, summary.stopped_reason = outcome.failed_out, outcome.stopped_reason
    except KeyboardInterrupt as e:
        summary.interrupted, summary.terminated = True, isinstance(e, Terminated)
    finally:
        summary.ran = sum(t.number >= trials_before and t.user_attrs.get("worker") in ours
                          for t in study.get_trials(deepcopy=False))  # not other machines' trials
        close_stale_trials(study, storage, tracker)  # another machine's dead worker may be stale by now
        log_study_artifacts(study, tracker, parent_id, cfg)
        tracker.end(parent_id, "KILLED" if summary.interrupted else "FINISHED")
    return fill_summary(summary, study)
