"""`unet-opt figures`: the figures of trials that did not complete, drawn into their runs when wanted.

A trial that completes gets its figures (curves, confusion matrix, predictions) as it ends. A pruned or
failed one keeps its tables and metrics, and `figures.npz`: what its figures are drawn from. Drawing them
as every such trial ended would cost about a second each, mostly for trials nobody opens.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from optuna.trial import TrialState

from unet_opt.config.paths import sqlite_file
from unet_opt.errors import UserError
from unet_opt.study.states import shown_state
from unet_opt.study.storage import load_existing
from unet_opt.tracking.report_files import FIGURES, FIGURES_LATER, load_report, write_report
from unet_opt.tracking.tracker import Tracker
from unet_opt.tracking.writer import runs_being_written, write_reports_of_dead_writers


@dataclass
class Drawn:
    """What `draw_figures` did: trials drawn now, and trials asked for that had nothing left to draw."""

    study: str
    drawn: list[int]
    skipped: dict[int, str]  # trial -> why
    recovered: int = 0  # runs whose files a killed search had left unwritten, written now
    without_files: list[int] = field(default_factory=list)  # trials whose search was stopped before their files
    not_yet: list[int] = field(default_factory=list)  # trials still running, or whose files a search is writing


def draw_figures(storage_url: str, tracking_uri: str, artifact_root: Path, study_name: str | None,
                 numbers: tuple[int, ...] = ()) -> Drawn:
    """Draw the figures of the trials `numbers` (default: every trial whose figures are not drawn yet)
    into their runs."""
    study, _, _ = load_existing(storage_url, study_name)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    unknown = sorted(set(numbers) - set(trials))
    if unknown:
        raise UserError(f"study '{study.study_name}' has no trial #{unknown[0]} (its trials are #0 to "
                        f"#{max(trials, default=0)}); see `unet-opt report`")
    database = sqlite_file(tracking_uri)
    if database and not database.is_file():
        raise UserError(f"no MLflow store at {database}; pass the --tracking-uri the study ran with")
    tracker = Tracker(tracking_uri, study.study_name, artifact_root)
    result = Drawn(study.study_name, [], {})
    result.recovered = write_reports_of_dead_writers()  # a search killed with its writer: its trials' files first
    being_written = runs_being_written()
    for number in sorted(set(numbers)) or sorted(trials):  # each once, however often it was named
        trial = trials[number]
        run_id = trial.user_attrs.get("mlflow_run_id")
        if trial.state == TrialState.RUNNING or run_id in being_written:  # a search is at it: not lost, not ours
            result.skipped[number] = "running" if trial.state == TrialState.RUNNING else \
                f"{shown_state(trial)}, its files being written by its search"
            result.not_yet.append(number)
            continue
        present = {a.path for a in tracker.client.list_artifacts(run_id)} if run_id and tracker.has_run(run_id) else set()
        if FIGURES[0] in present:
            result.skipped[number] = "drawn already"
        elif not present and trial.state.is_finished():
            result.skipped[number] = f"{shown_state(trial)}, with no files (its search was stopped before it wrote them)"
            result.without_files.append(number)
        elif FIGURES_LATER not in present:
            result.skipped[number] = f"{shown_state(trial)}, with no epoch to draw"
        else:
            with tempfile.TemporaryDirectory() as tmp:
                saved = Path(tracker.client.download_artifacts(run_id, FIGURES_LATER, tmp))
                folder = Path(tmp) / "figures"
                folder.mkdir()
                write_report(folder, load_report(saved))
                tracker.log_files(run_id, folder)
            result.drawn.append(number)
    return result
