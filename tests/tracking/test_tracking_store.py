"""A new MLflow store is a copy of an empty, migrated database kept in the user's cache, one per MLflow
version; MLflow's migrations (1-2 s) run once to make that copy, and again only where it is missing,
damaged or out of date, or where the cache cannot be written."""

import contextlib
import multiprocessing
import sqlite3
from pathlib import Path

import mlflow.store.db.utils
import pytest
import sqlalchemy
from mlflow.tracking import MlflowClient

from unet_opt.config.paths import create_atomically
from unet_opt.tracking.store_template import new_store, newest_schema_revision, schema_revision, schema_template_path
from unet_opt.tracking.tracker import Tracker


@pytest.fixture
def migrations(monkeypatch) -> list[str]:
    """The database paths MLflow migrates from now on (it still does)."""
    done, real = [], mlflow.store.db.utils._initialize_tables
    monkeypatch.setattr(mlflow.store.db.utils, "_initialize_tables",
                        lambda engine: (done.append(engine.url.database), real(engine))[1])
    return done


def no_migrations(monkeypatch) -> None:
    def refuse(*args):
        raise AssertionError("MLflow's migrations ran")

    monkeypatch.setattr(mlflow.store.db.utils, "_initialize_tables", refuse)
    monkeypatch.setattr(mlflow.store.db.utils, "_upgrade_db", refuse)


def tracker(folder: Path) -> Tracker:
    folder.mkdir(exist_ok=True)
    return Tracker(f"sqlite:///{folder}/mlruns/mlflow.db", "s", folder / "mlruns" / "artifacts")


def schema(path: Path) -> tuple[set, list]:
    """Every table, index and trigger with the lines of its SQL, and the alembic revision. The lines are
    sorted: MLflow's migrations write a table's constraints in an order that varies from run to run."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return ({(kind, name, table, tuple(sorted(line.strip(" ,\t") for line in (sql or "").splitlines())))
                 for kind, name, table, sql in db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master")},
                db.execute("SELECT version_num FROM alembic_version").fetchall())


def default_experiment(path: Path) -> tuple:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT name, artifact_location, lifecycle_stage, creation_time, last_update_time "
                          "FROM experiments WHERE experiment_id = 0").fetchone()


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def scribble(path: Path) -> None:  # a page in the middle overwritten: the size and header are intact
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 4096] = b"\xff" * 4096
    path.write_bytes(bytes(data))


def old_revision(path: Path) -> None:  # a whole database, but of another schema revision
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE alembic_version SET version_num = '0a8213491aaa'")


def make_at_once(folder: Path, barrier, results) -> None:
    try:
        barrier.wait(timeout=60)
        t = tracker(folder)
        t.client.get_run(t.start_run("r", {}, {}))
        results.put("ok")
    except Exception as e:
        results.put(f"{type(e).__name__}: {e}")


def test_the_second_store_is_a_copy_of_the_cached_template_and_works(tmp_path, cache, monkeypatch):
    tracker(tmp_path / "a")
    template = schema_template_path()
    assert template == cache / "unet-opt" / f"mlflow-schema-{mlflow.__version__}.db"
    assert schema_revision(template) == newest_schema_revision()
    no_migrations(monkeypatch)

    second = tracker(tmp_path / "b")
    client = MlflowClient(f"sqlite:///{tmp_path}/b/mlruns/mlflow.db")
    experiment = client.create_experiment("other", artifact_location=(tmp_path / "b" / "x").as_uri())
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "m", 1.0)
    client.set_terminated(run.info.run_id)
    assert client.get_run(run.info.run_id).data.metrics == {"m": 1.0}
    assert second.start_run("r", {"p": 1}, {}) and second.experiment_id != experiment
    name, location, stage, created, updated = default_experiment(tmp_path / "b" / "mlruns" / "mlflow.db")
    assert (name, location, stage) == ("Default", (tmp_path / "b" / "mlruns" / "artifacts" / "0").as_uri(), "active")
    assert created == updated and created > default_experiment(template)[3]  # dated when the store was made
    assert sorted(p.name for p in template.parent.iterdir()) == [template.name]  # no partial file left
    assert sorted(p.name for p in (tmp_path / "b" / "mlruns").iterdir()) == ["mlflow.db"]


def test_a_store_from_the_template_equals_one_made_by_mlflow(tmp_path, cache):
    (tmp_path / "migrated").mkdir()
    MlflowClient(f"sqlite:///{tmp_path}/migrated/mlflow.db").search_experiments()  # MLflow's own way
    (tmp_path / "copied").mkdir()
    create_atomically(tmp_path / "copied" / "mlflow.db", new_store)  # makes the template
    create_atomically(tmp_path / "copied" / "second.db", new_store)  # a copy of it

    assert schema(tmp_path / "copied" / "second.db") == schema(tmp_path / "migrated" / "mlflow.db")
    assert schema(tmp_path / "copied" / "second.db")[1] == [(newest_schema_revision(),)]
    assert schema(schema_template_path()) == schema(tmp_path / "migrated" / "mlflow.db")


@pytest.mark.parametrize("damage", [truncate, scribble, old_revision, lambda p: p.write_bytes(b""),
                                    lambda p: p.write_text("not a database")],
                         ids=["truncated", "scribbled", "old revision", "empty", "text"])
def test_a_damaged_or_outdated_template_is_rebuilt_not_copied(tmp_path, cache, migrations, damage):
    tracker(tmp_path / "a")
    template = schema_template_path()
    damage(template)
    assert schema_revision(template) != newest_schema_revision()
    del migrations[:]

    b = tracker(tmp_path / "b")
    assert len(migrations) == 1 and migrations[0].startswith(str(template))  # the template rebuilt, once
    assert schema_revision(template) == newest_schema_revision()
    assert schema(tmp_path / "b" / "mlruns" / "mlflow.db") == schema(tmp_path / "a" / "mlruns" / "mlflow.db")
    assert b.client.get_run(b.start_run("r", {}, {})).info.status == "RUNNING"
    assert sorted(p.name for p in template.parent.iterdir()) == [template.name]

    tracker(tmp_path / "c")
    assert len(migrations) == 1  # and copied from then on


@pytest.mark.slow
def test_processes_making_stores_at_once_with_an_empty_cache_all_get_a_sound_one(tmp_path, cache):
    """Searches started together in new folders: each may build the template; any whole one will do."""
    context = multiprocessing.get_context("fork")  # no torch here: fork is safe
    barrier, results = context.Barrier(3), context.Queue()
    started = [context.Process(target=make_at_once, args=(tmp_path / str(i), barrier, results)) for i in range(3)]
    for p in started:
        p.start()
    assert [results.get(timeout=180) for _ in started] == ["ok"] * 3
    for p in started:
        p.join(30)
    template = schema_template_path()
    assert schema_revision(template) == newest_schema_revision()
    assert sorted(p.name for p in template.parent.iterdir()) == [template.name]


def test_without_a_writable_cache_stores_are_migrated_in_place(tmp_path, monkeypatch, migrations):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))  # a file: no folder can be made in it

    for name in ("a", "b"):
        t = tracker(tmp_path / name)
        assert t.client.get_run(t.start_run("r", {}, {})).info.status == "RUNNING"
    assert [Path(m).parent.parent.name for m in migrations] == ["a", "b"]
    assert schema(tmp_path / "a" / "mlruns" / "mlflow.db") == schema(tmp_path / "b" / "mlruns" / "mlflow.db")


def test_the_cache_follows_xdg_cache_home_or_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert schema_template_path().parent == tmp_path / "unet-opt"
    for unset in ("", "relative/path"):  # the XDG rule: a relative path is ignored
        monkeypatch.setenv("XDG_CACHE_HOME", unset)
        monkeypatch.setenv("HOME", str(tmp_path / "me"))
        assert schema_template_path().parent == tmp_path / "me" / ".cache" / "unet-opt"


def test_create_atomically_can_replace_a_cached_file(tmp_path):
    create_atomically(tmp_path / "x.db", lambda path: path.write_text("first"), replace=True)
    create_atomically(tmp_path / "x.db", lambda path: path.write_text("second"), replace=True)
    assert (tmp_path / "x.db").read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["x.db"]


def test_a_template_holding_more_than_the_empty_schema_is_rebuilt(tmp_path, cache):
    create_atomically(tmp_path / "first.db", new_store)  # makes the template
    template = schema_template_path()
    with contextlib.closing(sqlite3.connect(template)) as db, db:  # an experiment planted in it
        db.execute("INSERT INTO experiments (experiment_id, name, artifact_location, lifecycle_stage) "
                   "VALUES (7, 'planted', 'file:///elsewhere', 'active')")
    create_atomically(tmp_path / "second.db", new_store)
    with contextlib.closing(sqlite3.connect(tmp_path / "second.db")) as db:
        assert db.execute("SELECT name FROM experiments").fetchall() == [("Default",)]


@pytest.mark.parametrize("alter", ["DROP TABLE metrics", "ALTER TABLE params DROP COLUMN value"],
                         ids=["a table dropped", "a column dropped"])
def test_a_template_whose_tables_were_altered_is_rebuilt_not_copied(tmp_path, cache, migrations, alter):
    # its schema revision is still right: the label alone would let every trial of every new store fail
    tracker(tmp_path / "a")
    template = schema_template_path()
    with contextlib.closing(sqlite3.connect(template)) as db, db:
        db.execute(alter)
    assert schema_revision(template) is None
    del migrations[:]
    b = tracker(tmp_path / "b")
    assert len(migrations) == 1  # the template rebuilt, once, and the new store copied from it
    assert schema(tmp_path / "b" / "mlruns" / "mlflow.db") == schema(tmp_path / "a" / "mlruns" / "mlflow.db")
    run_id = b.start_run("r", {"p": 1}, {})
    b.log_metrics(run_id, {"m": 1.0}, step=1)  # what failed with the metrics table gone
    assert b.client.get_run(run_id).data.metrics == {"m": 1.0}


@pytest.mark.parametrize("template", [False, True], ids=["migrated", "from the template"])
def test_a_relative_tracking_uri_makes_a_new_store_in_the_working_folder(tmp_path, cache, monkeypatch, template):
    # `--tracking-uri sqlite:///mlruns/mlflow.db`, the form --help shows, was refused on a new folder as
    # "damaged or unreadable" (a relative path has no file URI)
    monkeypatch.chdir(tmp_path)
    if template:
        Tracker(f"sqlite:///{tmp_path}/first/mlflow.db", "s", tmp_path / "first" / "artifacts")
    mlruns = f"mlruns-{template}"  # MLflow keeps a store per URI for the life of the process: one URI a test
    store = Tracker(f"sqlite:///{mlruns}/mlflow.db", "s", tmp_path / mlruns / "artifacts")
    assert store.client.get_experiment("0").artifact_location == (tmp_path / mlruns / "artifacts" / "0").as_uri()
    assert (tmp_path / mlruns / "mlflow.db").is_file()


def test_a_run_stopped_inside_a_store_read_still_ends_killed_at_once(tmp_path):
    """Ctrl-C during a retrain or train run that lands just after one of MLflow's SELECTs: the stopped frames
    kept that read's transaction open, so the run's end waited out SQLite's lock for 20 s and then failed
    with "database is locked" instead of ending the run KILLED."""
    store = tracker(tmp_path)
    run_id = store.start_run("retrain", {}, {})
    armed = [True]

    def stop_after_a_select(conn, cursor, statement, *args):
        if armed[0] and statement.lstrip().upper().startswith("SELECT"):
            armed[0] = False
            raise KeyboardInterrupt()

    sqlalchemy.event.listen(store.client._tracking_client.store.engine, "after_cursor_execute", stop_after_a_select)
    with pytest.raises(KeyboardInterrupt), store.closing(run_id):
        store.log_metrics(run_id, {"val_dice": 0.5}, step=1)
    assert not armed[0] and store.client.get_run(run_id).info.status == "KILLED"
