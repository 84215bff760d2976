"""The MLflow UI over a project's store (`unet-opt ui`), and the links to each study's ranked runs table."""

from __future__ import annotations

import shlex
import sys
import urllib.parse
from pathlib import Path

from mlflow.tracking import MlflowClient

from unet_opt.config.paths import redact_url, sqlite_file
from unet_opt.config.schema import SearchConfig
from unet_opt.errors import UserError
from unet_opt.parallel.servers import Server, check_port, local_base
from unet_opt.tracking.tracker import RANKED_VIEW, SHARED_VIEW_TAG, point_at_own_folder

# what MLflow's server says on every start, and a user need not read (its request lines are off, and its
# libraries' warnings ignored, by the command and the environment it starts with)
MLFLOW_NOISE = ("Registry store URI not provided", "[MLflow] Security middleware enabled")
JOB_EXECUTION = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"


def ui_command(tracking_uri: str, host: str = "127.0.0.1", port: int = 5000, allowed_hosts: str = "") -> list[str]:
    """The `mlflow ui` command over a local store, with one worker (a personal UI that starts in seconds),
    uvicorn's request lines off."""
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri, "--registry-store-uri",
            tracking_uri, "--host", host, "--port", str(port), "--workers", "1",
            "--uvicorn-opts", "--log-level warning --no-access-log",
            *(["--allowed-hosts", allowed_hosts] if allowed_hosts else [])]


def ui_command_line(home: Path, tracking_uri: str | None) -> str:
    """`unet-opt ui` as a user must type it here to see the store of a command run with `--home home` and
    `--tracking-uri tracking_uri` (None: the project folder's own store)."""
    words = ["unet-opt"]
    if home != Path.cwd().resolve():
        words += ["--home", shlex.quote(str(home))]
    words.append("ui")
    if tracking_uri:
        words += ["--tracking-uri", shlex.quote(redact_url(tracking_uri))]
    return " ".join(words)


def how_to_see_run(ui_command_line: str, tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """What to run and open to see one run (a retrain's, a baseline's)."""
    page = f"#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {redact_url(tracking_uri).rstrip('/')}/{page}"
    return f"`{ui_command_line}`, then open http://127.0.0.1:5000/{page}"


def how_to_open(ui_command_line: str, tracking_uri: str, experiment_id: str) -> str:
    """What the summary tells a user to run and open to see the study's runs, ranked."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {ranked_table_url(redact_url(tracking_uri), experiment_id)}"
    return f"`{ui_command_line}`, then open {ranked_table_url('http://127.0.0.1:5000', experiment_id)}"


def ranked_table_url(base: str, experiment_id: str) -> str:
    """A study's runs table in its ranked view (see `Tracker.save_ranked_view`), with the side bar of
    "Model training" rather than "GenAI". The link holds no sort or filter: MLflow would then ignore the view."""
    return (f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={RANKED_VIEW}"
            "&workflowType=machine_learning")


def study_pages(tracking_uri: str, base: str) -> list[tuple[str, str]]:
    """(study, its ranked runs table) for every study in a store: what `unet-opt ui` points to. A study's
    experiment is found by its study run, whatever its name (folders of earlier versions included)."""
    client = MlflowClient(tracking_uri)
    pages = []
    for exp in client.search_experiments():
        parents = client.search_runs([exp.experiment_id], "tags.`unet_opt.role` = 'study'", max_results=1)
        if not parents:  # not a study's experiment (a baseline's, or the user's own)
            continue
        if SHARED_VIEW_TAG + RANKED_VIEW in exp.tags:
            url = ranked_table_url(base, exp.experiment_id)
        else:  # made before the view existed: sorted by the value, without its columns
            metric = parents[0].data.params.get("metric", "val_dice")
            ascending = str(not SearchConfig(metric=metric).goal.maximize).lower()
            url = (f"{base}/#/experiments/{exp.experiment_id}/runs?"
                   f"orderByKey={urllib.parse.quote(f'metrics.`best_{metric}`')}&orderByAsc={ascending}")
        pages.append((parents[0].data.tags.get("optuna.study", exp.name), url))
    return pages


def mlflow_ui(tracking_uri: str, artifact_root: Path, host: str, port: int,
              allowed_hosts: str = "") -> tuple[Server, list[tuple[str, str]]]:
    """The MLflow UI over a local store, checked and ready to serve, and (study, its ranked runs table) for
    every study in it."""
    if tracking_uri.startswith(("http://", "https://")):
        raise UserError(f"the tracking store is a server already; open {redact_url(tracking_uri)} in a browser")
    database = sqlite_file(tracking_uri)
    if database and not database.is_file():
        raise UserError(f"no MLflow runs at {database}; run `unet-opt search` in this folder first (or pass --home)")
    check_port(host, port)
    point_at_own_folder(tracking_uri, artifact_root)
    env = {"PYTHONWARNINGS": "ignore", "MLFLOW_TRACKING_URI": tracking_uri,  # its libraries' deprecation notices
           # MLflow's job runner (GenAI jobs: prompt optimisation, trace roll-ups) is 8 more processes and ~1.2 GB
           # that a UI over training runs never uses
           JOB_EXECUTION: "false"}
    return (Server("the MLflow UI", ui_command(tracking_uri, host, port, allowed_hosts), env, MLFLOW_NOISE),
            study_pages(tracking_uri, local_base(host, port)))

