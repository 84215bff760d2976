"""A project folder moved, copied or rsynced elsewhere reads and writes only its new place."""

import shutil
import sqlite3
from pathlib import Path

import pytest
from conftest import FAST, free_port
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service.utils import _artifact_repos_cache as artifact_repos_cache
from PIL import Image

from unet_opt.tracking.relocate import LOCATION_COLUMNS, local_path, relocate_store
from unet_opt.tracking.tracker import Tracker
from unet_opt.tracking.ui import mlflow_ui


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file()}


def stored_locations(home: Path) -> list[Path]:
    """Every local artifact location the project's MLflow store holds."""
    with sqlite3.connect(home / "mlruns" / "mlflow.db") as db:
        values = [value for table, column in LOCATION_COLUMNS
                  for (value,) in db.execute(f"SELECT {column} FROM {table}")]
    return [path for path in map(local_path, filter(None, values)) if path is not None]


def test_a_copied_store_points_at_its_own_artifacts(tmp_path, monkeypatch):
    old, new = tmp_path / "old", tmp_path / "new place"  # a space: file URIs are percent-encoded
    old.mkdir()
    tracker = Tracker(f"sqlite:///{old}/mlruns/mlflow.db", "study", old / "mlruns" / "artifacts")
    run_id = tracker.start_run("trial-0000", {"lr": 0.1}, {})
    (tmp_path / "config.toml").write_text("x = 1\n")
    tracker.client.log_artifact(run_id, str(tmp_path / "config.toml"))
    shutil.copytree(old, new)

    database = new / "mlruns" / "mlflow.db"
    assert relocate_store(database, new / "mlruns" / "artifacts") >= 3  # Default, the experiment, the run
    assert relocate_store(database, new / "mlruns" / "artifacts") == 0  # once is enough
    assert all(path.is_relative_to(new) for path in stored_locations(new))
    client = MlflowClient(f"sqlite:///{database}")
    assert client.get_run(run_id).info.artifact_uri.startswith((new / "mlruns" / "artifacts").as_uri())
    assert Path(client.download_artifacts(run_id, "config.toml", str(tmp_path))).read_text() == "x = 1\n"
    # a store kept apart from the project's artifacts (--tracking-uri elsewhere) is never rewritten
    assert relocate_store(database, tmp_path / "elsewhere" / "artifacts") == 0

    # a relative URL (--tracking-uri sqlite:///mlruns/mlflow.db, run in the folder) names the same store
    fourth = tmp_path / "fourth"
    shutil.copytree(old, fourth)
    monkeypatch.chdir(fourth)
    assert relocate_store(Path("mlruns/mlflow.db"), fourth / "mlruns" / "artifacts") >= 3
    assert all(path.is_relative_to(fourth) for path in stored_locations(fourth))

    # `unet-opt ui` points a copy at itself before its server reads the store
    third = tmp_path / "third"
    shutil.copytree(old, third)
    mlflow_ui(f"sqlite:///{third}/mlruns/mlflow.db", third / "mlruns" / "artifacts", "127.0.0.1", free_port())
    assert all(path.is_relative_to(third) for path in stored_locations(third))


def test_a_folder_made_before_experiments_were_prefixed_keeps_one_experiment(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    Tracker(uri, "unused", tmp_path / "mlruns" / "artifacts")  # makes the store
    client = MlflowClient(uri)
    former = client.create_experiment("default", (tmp_path / "mlruns" / "artifacts" / "default").as_uri())
    client.create_run(former, tags={"unet_opt.role": "study"})
    mine = client.create_experiment("mine")  # a user's own experiment is never renamed
    tracker = Tracker(uri, "default", tmp_path / "mlruns" / "artifacts")
    assert tracker.experiment_id == former and client.get_experiment(former).name == "unet-opt-default"
    Tracker(uri, "mine", tmp_path / "mlruns" / "artifacts")
    assert client.get_experiment(mine).name == "mine"
    assert client.get_experiment_by_name("unet-opt-mine") is not None


@pytest.mark.slow
def test_every_command_works_in_a_moved_and_in_a_copied_folder(tmp_path, cli):
    first = tmp_path / "first"
    first.mkdir()
    assert cli("--home", str(first), "search", "--trials", "2", "--pruner", "none", *FAST)[0] == 0
    assert cli("--home", str(first), "retrain", "--best")[0] == 0
    moved, copy = tmp_path / "moved here", tmp_path / "copy"
    first.rename(moved)  # the old place is gone: reading from it would fail, writing would remake it
    shutil.copytree(moved, copy)
    before = snapshot(moved)
    image = tmp_path / "photo.png"
    Image.new("RGB", (90, 60), (120, 140, 90)).save(image)

    for home in (copy, moved):
        def run(*args, home=home):
            # each command is a process of its own; in this one, MLflow's per-run cache of artifact
            # locations (keyed by run id, which a copy shares) would outlive a command
            artifact_repos_cache.clear()
            return cli("--home", str(home), *args)

        assert run("report")[0] == 0 and run("studies")[0] == 0
        code, _, err = run("search", "--trials", "3", "--pruner", "none", *FAST)  # resumed: one trial more
        assert code == 0, err
        assert run("retrain", "--best")[0] == 0
        assert run("evaluate", "models:/unet-opt-default@champion", "--out", str(home / "evaluation"))[0] == 0
        assert run("predict", "models:/unet-opt-default@champion", str(image), "--out", str(home / "masks"))[0] == 0
        assert not first.exists()  # nothing was written to the old place
        assert all(path.is_relative_to(home) for path in stored_locations(home))
        client = MlflowClient(f"sqlite:///{home}/mlruns/mlflow.db")
        experiment = client.get_experiment_by_name("unet-opt-default")
        for found in client.search_runs([experiment.experiment_id]):
            files = {a.path for a in client.list_artifacts(found.info.run_id)}
            study_run = found.data.tags.get("unet_opt.role") == "study"
            assert ("study_plots.html" if study_run else "config.toml") in files, found.info.run_name  # read here
        if home == copy:
            assert snapshot(moved) == before  # the folder it was copied from is untouched
