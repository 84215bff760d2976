"""What a study holds: the search's summary, `report`, `studies`, and the parent run's files."""

from __future__ import annotations

import csv
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from unet_opt import runtime
from unet_opt.config.paths import redact_url
from unet_opt.config.schema import Config, to_toml
from unet_opt.study.dashboard import live_view_line, served_at
from unet_opt.study.states import count_states, describe_counts, epochs_reported, reason_of, shown_state
from unet_opt.study.storage import best_value, load_existing, open_storage

if TYPE_CHECKING:  # MLflow is imported only by the commands that log
    from unet_opt.tracking.tracker import Tracker
    from unet_opt.tracking.writer import ArtifactWriter

log = logging.getLogger(__name__)


@dataclass
class Summary:
    study: str
    target: int
    counts: dict[str, int]
    best: dict[str, Any] | None
    ran: int = 0
    already_done: bool = False
    interrupted: bool = False
    terminated: bool = False  # interrupted by SIGTERM rather than Ctrl-C
    failed_out: bool = False  # stopped after MAX_FAILURES_IN_A_ROW failures
    stopped_reason: str = ""
    tracking_uri: str = ""
    parent_run_id: str = ""
    metric: str = "val_dice"
    ui: str = ""


def trial_record(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """One trial as `report --json` gives it: `state` in the one vocabulary (`states.SHOWN`), Optuna's own
    state beside it. A running trial's epochs are those it has reported so far."""
    best_epoch, ran = (epochs_reported(t) if t.state == TrialState.RUNNING
                       else (t.user_attrs.get("best_epoch"), t.user_attrs.get("epochs_run")))
    return {"number": t.number, "state": shown_state(t), "optuna_state": t.state.name, "value": t.value,
            "params": t.params, "mlflow_run_id": t.user_attrs.get("mlflow_run_id"), "reason": reason_of(t),
            "best_epoch": best_epoch, "epochs_run": ran}


def fill_summary(summary: Summary, study: optuna.Study) -> Summary:
    trials = study.get_trials(deepcopy=False)
    summary.counts = count_states(trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        summary.best = trial_record(study.best_trial)
    return summary


def study_report(storage_url: str, name: str | None) -> dict[str, Any]:
    """The JSON `unet-opt report --json` prints."""
    study, setup, _ = load_existing(storage_url, name)
    trials = [trial_record(t) for t in study.get_trials(deepcopy=False)]
    best = None
    if any(t["state"] == "complete" for t in trials):
        b = trial_record(study.best_trial)
        best = {k: b[k] for k in ("number", "value", "params", "mlflow_run_id")}
    return {"study": study.study_name, "direction": study.direction.name.lower(),
            "metric": setup.get("config", {}).get("search.metric", ""),
            "best": best, LAST_RETRAIN: study.user_attrs.get(LAST_RETRAIN), "trials": trials}


def list_studies(storage_url: str) -> list[dict[str, Any]]:
    storage = open_storage(storage_url, must_exist=True)
    rows = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=s.study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        rows.append({"study": s.study_name, "trials": len(trials), **count_states(trials), "best": best_value(study),
                     "started": s.datetime_start.isoformat(timespec="seconds") if s.datetime_start else ""})
    return rows


STUDY_FILES = ("study_plots.html", "trials.csv", "space.toml")
FILES_TAG = "unet_opt.files_cover"  # the trials the parent's files were written for, e.g. "30 trials, 30 ended"


def files_cover(study: optuna.Study) -> str:
    trials = study.get_trials(deepcopy=False)
    return f"{len(trials)} trials, {sum(t.state.is_finished() for t in trials)} ended"


def log_study_artifacts(study: optuna.Study, tracker: Tracker, parent_id: str, cfg: Config,
                        writer: ArtifactWriter | None = None) -> None:
    """On the parent run: its note brought up to date (a stop may have ended a trial since), the Optuna
    plots in one self-contained HTML, the trials table, the space; then a tag saying which trials they
    cover, so that a later command can tell stale or missing files. With a `writer`, the plots are drawn
    there, from the trials as they are now: it has their libraries imported (here ~2 s: plotly, and
    scikit-learn for the importances) and the caller waits for it anyway."""
    try:
        describe_parent(study, tracker, parent_id, cfg)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            write_trials_csv(study, folder / "trials.csv")
            (folder / "space.toml").write_text(to_toml(cfg, redact_url), encoding="utf-8")
            if writer is None:
                write_study_plots(study, folder / "study_plots.html")
            tracker.log_files(parent_id, folder)
        if writer is not None:
            local = tracker.local_artifact_folder(parent_id)
            if local is not None:  # missing, not stale, until drawn: a kill before then is seen and redrawn
                (local / "study_plots.html").unlink(missing_ok=True)
            trials = study.get_trials(deepcopy=False)
            writer.submit_drawing(parent_id, draw_study_plots,
                                  (study.study_name, study.directions, study.metric_names, trials), local)
        tracker.set_tags(parent_id, {FILES_TAG: files_cover(study)})
    except Exception as e:  # the study itself is safe in the storage; only its summary files are missing
        log.warning("could not log the study's plots and tables (%s)", e)


def describe_parent(study: optuna.Study, tracker: Tracker, parent_id: str, cfg: Config) -> None:
    """The parent run's tags `best_trial`, `best_run_id`, `best_value` and its Markdown description (the
    run's note in the MLflow UI): first the best trial with a link to its run, its value and its params,
    then the counts by state and how to retrain it (what the note shows before "Show more"), then the live
    view's link. Written after every trial and when a search ends, however it ends."""
    trials = study.get_trials(deepcopy=False)
    metric, lines, tags = cfg.search.goal.metric, [], {}
    if best_value(study) is not None:
        best = study.best_trial
        run_id = best.user_attrs.get("mlflow_run_id", "")
        tags = {"best_trial": best.number, "best_run_id": run_id, "best_value": f"{best.value:.6g}"}
        params = ", ".join(f"`{k}` = {v:.4g}" if isinstance(v, float) else f"`{k}` = {v}"
                           for k, v in best.params.items())
        lines += [f"**Best trial: [#{best.number}]({run_link(tracker.experiment_id, run_id)})**, `{metric}` = "
                  f"{best.value:.4f} at epoch {best.user_attrs.get('best_epoch')}: {params}.", ""]
    attrs = study.user_attrs
    retrained = attrs.get(LAST_RETRAIN)
    retrain = f" Retrain the best trial on train+val, test it and register it: `unet-opt retrain --best --study " \
              f"{study.study_name}`" if tags else ""
    if tags and retrained:
        retrain = f" Last retrain: {retrain_words(retrained)}." + \
                  (retrain if retrained["trial"] != best.number else "")
    lines += [f"Study `{study.study_name}`: {describe_counts(count_states(trials))} (of {cfg.search.trials} "
              f"finished trials asked for), scored by `{metric}` ({cfg.search.goal.direction}).{retrain}"]
    lines += ["", live_view_line(study._study_id, served_at(attrs)[1])]  # Optuna's id of the study: its page
    tracker.set_tags(parent_id, {**tags, "trials_target": cfg.search.trials, "mlflow.note.content": "\n".join(lines)})


LAST_RETRAIN = "last_retrain"  # the study's user attribute: what its last `retrain --best` registered


def retrain_words(retrained: dict[str, Any]) -> str:
    """A retrain as the study's note tells it (`report` without the backticks), as what happened then (the alias
    may have moved since): "trial #18 -> `models:/unet-opt-default/3` (test_dice 0.9011), `@champion` was moved
    to it"."""
    # in backticks: MLflow's Markdown makes a link of a bare @name
    alias = "`@champion` was moved to it" if retrained["champion_moved_to_it"] else \
        f"`@champion` was left on version {retrained['champion_left_on']}, which tested better"
    score = f"{retrained['metric']} {retrained['value']:.4f}" if retrained["value"] is not None else "not tested"
    return f"trial #{retrained['trial']} -> `models:/{retrained['model']}/{retrained['version']}` ({score}), {alias}"


def run_link(experiment_id: str, run_id: str) -> str:
    """A run's page in the MLflow UI, in its model-training mode (not GenAI's)."""
    return f"#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def write_trials_csv(study: optuna.Study, path: Path) -> None:
    trials = study.get_trials(deepcopy=False)
    names = sorted({k for t in trials for k in t.params})
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "state", "value", *names, "best_epoch", "epochs_run", "reason", "mlflow_run_id",
                    "seconds"])
        for t in trials:
            r = trial_record(t)
            seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else ""
            w.writerow([t.number, t.state.name, "" if t.value is None else t.value,
                        *[t.params.get(n, "") for n in names], r["best_epoch"], r["epochs_run"], r["reason"],
                        r["mlflow_run_id"], seconds])


def import_study_plot_libraries() -> None:
    """What `write_study_plots` needs, imported ahead (a writer process does it while trials train)."""
    import optuna.visualization  # noqa: F401  plotly
    from sklearn.ensemble import RandomForestRegressor  # noqa: F401  the importances' evaluator (fANOVA)


def draw_study_plots(folder: Path, name: str, directions: list, metric_names: list[str] | None,
                     trials: list[optuna.trial.FrozenTrial]) -> None:
    """`write_study_plots` into `folder` for a study rebuilt in memory from its trials (in a writer process,
    which never opens the study storage)."""
    with runtime.optuna_errors_only():  # "a new study created in memory"
        study = optuna.create_study(study_name=name, directions=directions)
    if metric_names:
        study.set_metric_names(metric_names)
    study.add_trials(trials)
    write_study_plots(study, folder / "study_plots.html")


def write_study_plots(study: optuna.Study, path: Path) -> None:
    """Optimisation history, parameter importances, parallel coordinates and intermediate values."""
    from optuna import visualization as vis

    parts, first = [], True
    notes = {"intermediate values": "<p>Each trial's best value so far after each epoch: what the pruner judges "
                                    "and what the trial is scored by (the per-epoch values are in each trial's "
                                    "run).</p>"}
    # the objective by its name, as the study has it, where Optuna's plots would say "Objective Value"
    named = {"target_name": study.metric_names[0]} if study.metric_names else {}
    for title, plot, kwargs in (("optimization history", vis.plot_optimization_history, named),
                                ("parameter importances", vis.plot_param_importances, {}),
                                ("parallel coordinates", vis.plot_parallel_coordinate, named),
                                ("intermediate values", vis.plot_intermediate_values, {})):
        try:
            with warnings.catch_warnings(), runtime.optuna_errors_only():  # "no complete trials", "too few trials
                warnings.simplefilter("ignore", UserWarning)  # to compute importances": the page says so instead
                figure = plot(study, **kwargs)
        except Exception as e:  # e.g. importances need two complete trials
            parts.append(f"<h2>{title}</h2><p>not available yet: {e}</p>")
            continue
        figure.update_layout(title_text="")  # the section's own heading names it
        if title == "intermediate values":  # Optuna's "Step" and "Intermediate Value" are these here
            figure.update_layout(xaxis_title="epoch", yaxis_title=f"best {named.get('target_name', 'value')} so far")
        parts.append(f"<h2>{title}</h2>{notes.get(title, '')}"  # a fixed height: at 100 % one plot fills a tall window
                     + figure.to_html(full_html=False, include_plotlyjs=first, default_height=520))
        first = False  # one copy of plotly.js serves every figure: the file works offline
    path.write_text(f"<html><head><meta charset='utf-8'><title>{study.study_name}</title></head><body>"
                    f"<h1>study {study.study_name}</h1>{''.join(parts)}</body></html>", encoding="utf-8")
