"""`run_search(cfg, paths)`: run trials until the study has `search.trials` finished ones.

Everything checkable is checked first (placement, stores' paths, batch split, data); then the stores are
opened, the study is created or joined, and one worker (here) or `--workers K` processes run the trial
loop.
Ctrl-C ends the running trial as interrupted; the summary is returned either way.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from optuna.storages import BaseStorage

from unet_opt import runtime
from unet_opt.config.paths import Paths, check_store, redact_url
from unet_opt.config.schema import Config
from unet_opt.core.train import Fit, fit_job
from unet_opt.errors import Terminated
from unet_opt.parallel.placement import Placement, plan
from unet_opt.parallel.processes import worker_id
from unet_opt.runs.runner import Runner, warn_of_batches_above
from unet_opt.study.context import SearchContext
from unet_opt.study.dashboard import link_to_mlflow
from unet_opt.study.ledger import TrialLedger
from unet_opt.study.loop import work
from unet_opt.study.reconcile import check_stores_agree, finish_parent
from unet_opt.study.storage import (
    check_its_data,
    count_finished,
    existing_setup,
    join_or_create_study,
    open_storage,
    study_name,
    study_setup,
)
from unet_opt.study.summary import Summary, fill_summary, import_study_plot_libraries, log_study_artifacts
from unet_opt.study.workers import WorkerPlan, run_workers
from unet_opt.tracking.tracker import Tracker
from unet_opt.tracking.ui import how_to_open, ui_command_line
from unet_opt.tracking.writer import ArtifactWriter

log = logging.getLogger(__name__)


def run_search(cfg: Config, paths: Paths, placement: Placement | None = None, workers: int = 1,
               verbose: bool = False, fit: Fit = fit_job, writer: ArtifactWriter | None = None) -> Summary:
    """Run trials until the study has `cfg.search.trials` finished ones (or the timeout passes).

    `placement`: the processes/GPUs each trial trains on; `workers`: trials run at once on this machine,
    each worker a process with its own share of the devices, all on the one study and parent run.
    `fit` trains one trial on each rank (tests hand in a stand-in). `writer`: the search's writer process,
    started by the caller as early as it could (`ArtifactWriter.started`), else here; with --workers each
    worker has its own.
    """
    name = study_name(cfg)
    placement = placement or plan(cfg.train.device, None, None)  # `--device cuda` without a GPU fails here
    placements = placement.split(workers) if workers > 1 else [placement]
    storage_url, tracking_uri = paths.storage_url(cfg.search.storage), paths.tracking_uri(cfg.search.tracking_uri)
    check_store(storage_url, "--storage", "studies", "an Optuna study storage")
    check_store(tracking_uri, "--tracking-uri", "experiments", "an MLflow store")
    # this process's runner trains the trials when it is the only worker; its rank processes start now
    alone = workers == 1
    if alone and writer is None:
        writer = ArtifactWriter.started(tracking_uri, placement.device)
    with Runner(paths, placements[0], fit, keep_ranks=alone, writer=writer) as runner:
        if setup := existing_setup(storage_url, name):  # a study's own data is checked before any is decoded
            check_its_data(setup, cfg.data.dataset, lambda: runner.data_digests(cfg), name)
        names = runner.check(cfg, searched=True).names  # bad input fails here, before anything is written
        storage, tracker = open_stores(storage_url, tracking_uri, name, paths)
        runner.use_tracker(tracker)
        check_stores_agree(storage, storage_url, tracker, name)
        study, cfg = join_or_create_study(storage, cfg, name, names, runner.data_digests(cfg), tracker,
                                          search_params(cfg))
        if 0 < cfg.data.eval_size < max(cfg.values_of("data.image_size")):
            log.warning("data.eval_size = %d is below the largest data.image_size the space draws (%d): trials are "
                        "scored on a coarser truth than they train at", cfg.data.eval_size,
                        max(cfg.values_of("data.image_size")))
        warn_of_batches_above(cfg, len(study_setup(storage, name)["split"]["train"]))
        if not cfg.space and cfg.search.trials > 1:  # legal (seed-to-seed spread), but rarely what was meant
            log.warning("%s searches nothing (it has no [space.NAME] table): every trial trains the same config, "
                        "each with its own seed", cfg.source)
        ledger = TrialLedger(study, storage, tracker, study.user_attrs["mlflow_parent_run_id"])
        ledger.close_stale()  # the two stores made to agree after any kill
        ledger.mirror_ended()
        tracker.fail_runs_of_dead_processes()
        runner.write_reports_of_killed_searches()
        tracker.save_ranked_view(cfg.search.goal.metric, list(cfg.space))
        local = tracking_uri.startswith("sqlite")
        runner.in_background(link_to_mlflow, storage_url, name, tracker.experiment_id,
                             "" if local else redact_url(tracking_uri))
        summary = Summary(name, cfg.search.trials, {}, None, tracking_uri=redact_url(tracking_uri),
                          metric=cfg.search.goal.metric,
                          ui=how_to_open(ui_command_line(paths.home, cfg.search.tracking_uri), tracking_uri,
                                          tracker.experiment_id))
        if count_finished(study) >= cfg.search.trials:
            summary.already_done = True
            finish_parent(study, tracker, ledger.parent_id, cfg)
            return fill_summary(summary, study)
        if runner.writer is not None:  # it draws the study's plots at the end
            runner.writer.call(import_study_plot_libraries)
        return search(cfg, paths, ledger, runner, placements, verbose, summary)


def search_params(cfg: Config) -> dict[str, Any]:
    """The study's parent run's params: the search's own settings."""
    return {"space": cfg.source, "data": cfg.data.dataset, "sampler": cfg.search.sampler, "pruner": cfg.search.pruner,
            "brackets": cfg.search.brackets, "metric": cfg.search.metric, "seed": cfg.search.seed,
            "startup_trials": cfg.search.startup_trials}


def open_stores(storage_url: str, tracking_uri: str, name: str, paths: Paths) -> tuple[BaseStorage, Tracker]:
    """The study storage and the MLflow tracker; a tracking server is reached first, so that an unreachable
    one leaves no files behind."""
    if tracking_uri.startswith("sqlite"):
        storage = open_storage(storage_url)
        return storage, Tracker(tracking_uri, name, paths.artifacts)
    tracker = Tracker(tracking_uri, name, paths.artifacts)
    return open_storage(storage_url), tracker


def search(cfg: Config, paths: Paths, ledger: TrialLedger, runner: Runner, placements: list[Placement],
           verbose: bool, summary: Summary) -> Summary:
    """The trial loop, here or in `--workers` processes, under the study's parent run; the parent's files
    are written and the parent is ended however the loop ends."""
    study, tracker = ledger.study, ledger.tracker
    parent_id = tracker.open_parent(ledger.parent_id, study.study_name, search_params(cfg))
    study.set_user_attr("mlflow_parent_run_id", parent_id)
    ledger.parent_id = summary.parent_run_id = parent_id
    deadline = time.time() + cfg.search.timeout if cfg.search.timeout else float("inf")
    trials_before = len(study.get_trials(deepcopy=False))
    ours = [worker_id()]  # this process's and its workers' ids (host:pid), to count the trials run here
    if len(placements) > 1:
        log.info("%d workers, each training its trials on %s", len(placements), placements[0].describe())
    elif placements[0].procs > 1:
        log.info("each trial trains on %s", placements[0].describe())
    try:
        if len(placements) == 1:
            ended = work(SearchContext.open(cfg, ledger, runner, deadline))
        else:
            ended = run_workers(WorkerPlan(cfg, paths, parent_id, deadline, verbose, runner.fit), placements, ours)
        summary.failed_out, summary.stopped_reason = ended.failed_out, ended.stopped_reason
    except KeyboardInterrupt as e:
        summary.interrupted, summary.terminated = True, isinstance(e, Terminated)
        ledger.release_after(e)  # before the stores are written below
    finally:
        with runtime.stops_deferred("writing the study's last files and closing its run"):
            summary.ran = sum(t.number >= trials_before and t.user_attrs.get("worker") in ours
                              for t in study.get_trials(deepcopy=False))  # not other machines' trials
            ledger.close_stale()  # another machine's dead worker may be stale by now
            ledger.mirror_ended()  # a worker killed between its trial's end in Optuna and in MLflow
            log_study_artifacts(study, tracker, parent_id, cfg, runner.writer)  # its plots drawn by the writer
            runner.close()  # its ranks end; its writer is waited for
            tracker.end(parent_id, "KILLED" if summary.interrupted else "FINISHED")
    return fill_summary(summary, study)
