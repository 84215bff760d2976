"""`unet-opt ui`: the MLflow UI over a project's store, and the links to each study's ranked runs table."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from mlflow.tracking import MlflowClient

from unet_opt.config.paths import redact_url, sqlite_file
from unet_opt.config.schema import SearchConfig
from unet_opt.errors import UserError
from unet_opt.tracking.tracker import RANKED_VIEW, SHARED_VIEW_TAG, point_at_own_folder


def ui_command(tracking_uri: str, host: str = "127.0.0.1", port: int = 5000, allowed_hosts: str = "") -> list[str]:
    """The `mlflow ui` command over a local store, with one worker: a personal UI that starts in seconds."""
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri, "--host", host,
            "--port", str(port), "--workers", "1", *(["--allowed-hosts", allowed_hosts] if allowed_hosts else [])]


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


def serve_ui(tracking_uri: str, artifact_root: Path, host: str, port: int, show: Callable[[str], None] = print,
             start=subprocess.Popen, allowed_hosts: str = "") -> int:
    """Run the MLflow UI over a local store until it stops, or until Ctrl-C or SIGTERM stop it (and with
    it every process it started); returns its exit code. Once the checks pass, `show` gets the lines that
    say where to look. `start` is how the server process is started."""
    if tracking_uri.startswith(("http://", "https://")):
        raise UserError(f"the tracking store is a server already; open {redact_url(tracking_uri)} in a browser")
    database = sqlite_file(tracking_uri)
    if database and not database.is_file():
        raise UserError(f"no MLflow runs at {database}; run `unet-opt search` in this folder first (or pass --home)")
    with socket.socket() as probe:  # the server would fail on a busy port only after a while, and exit 0
        try:
            probe.bind((host, port))
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}); pass an address of this machine "
                                f"with --host (127.0.0.1, or 0.0.0.0 for every interface)") from None
            raise UserError(f"port {port} on {host} is in use (another `unet-opt ui`?); pass another --port") from None
    point_at_own_folder(tracking_uri, artifact_root)
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
    show(f"MLflow UI on {base}  (Ctrl-C stops it)")
    for study, url in study_pages(tracking_uri, base):
        show(f"  study '{study}', trials ranked: {url}")
    quiet = {"PYTHONWARNINGS": "ignore::DeprecationWarning"}  # the server's libraries' deprecation notices
    server = start(ui_command(tracking_uri, host, port, allowed_hosts),  # in its own process group: stopped as one
                   env={**os.environ, **quiet, "MLFLOW_TRACKING_URI": tracking_uri}, start_new_session=True)
    try:
        return server.wait()
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM through the CLI's handler
        stop_group(server)
        raise


def stop_group(server: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM to the server's process group; after `grace` seconds, SIGKILL to whatever is left of it."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return
    try:
        os.killpg(server.pid, signal.SIGKILL)  # workers that outlived the server
    except ProcessLookupError:
        pass
    server.wait()
