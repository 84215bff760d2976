"""The stores: created at once by several processes, damaged, foreign or unreachable."""

import functools
import multiprocessing
import sqlite3
import time

import optuna
import pytest
import sqlalchemy
from conftest import FAST, written_files

from unet_opt.config.paths import check_is_store_of
from unet_opt.errors import UserError
from unet_opt.study.storage import open_storage
from unet_opt.tracking.tracker import Tracker


def open_at_once(open_store, barrier, results) -> None:
    barrier.wait()
    try:
        open_store()
        results.put("ok")
    except Exception as e:
        results.put(f"{type(e).__name__}: {e}")


def open_together(open_store, processes: int = 3) -> list[str]:
    """`open_store()` in several processes at the same moment: `--workers`, a second terminal or
    `unet-opt status` all open the stores, and on new databases each one creates the tables."""
    context = multiprocessing.get_context("fork")  # opening a store needs no torch: fork is safe and fast
    barrier, results = context.Barrier(processes), context.Queue()
    started = [context.Process(target=open_at_once, args=(open_store, barrier, results)) for _ in range(processes)]
    for p in started:
        p.start()
    outcomes = [results.get(timeout=120) for _ in started]
    for p in started:
        p.join(30)
    return outcomes


def failing_once(error: Exception):
    calls = []

    def storage(url, **kwargs):
        calls.append(url)
        if len(calls) == 1:
            raise error
        return "storage"

    return storage, calls


PASSWORD_FORMS = {  # each way a password can be written into a store's URL
    "userinfo": ("http://mlflow-user:s3cret@127.0.0.1:9", "postgresql://optuna:s3cret@127.0.0.1:9/optuna"),
    "query": ("http://127.0.0.1:9/?token=s3cret", "postgresql://optuna@127.0.0.1:9/optuna?password=s3cret"),
    "url-encoded option": ("http://127.0.0.1:9/?options=-c%20password%3Ds3cret",
                           "postgresql://optuna@127.0.0.1:9/optuna?options=-c%20password%3Ds3cret%20-c%20x%3D1"),
    "quoted, with a space": ("http://127.0.0.1:9/?password='s3cret word'",
                             "postgresql://optuna@127.0.0.1:9/optuna?password='s3cret word'"),
}


@pytest.mark.parametrize("flag", ["--tracking-uri", "--storage"])
@pytest.mark.parametrize("form", list(PASSWORD_FORMS))
def test_unreachable_store_is_one_line_without_the_password(home, cli, flag, form):
    url = PASSWORD_FORMS[form][flag == "--storage"]
    code, out, err = cli("search", flag, url, *FAST)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert "s3cret" not in out + err and "***" in err, err
    assert written_files(home) == []  # checked before any training, nothing written


@pytest.mark.parametrize("store, away", [("studies/unet-opt.db", "studies/unet-opt.db"), ("mlruns/mlflow.db", "mlruns"),
                                         ("mine/notes.db", "mine/notes.db")])
def test_a_damaged_store_is_named_with_the_way_out_and_nothing_is_written(home, cli, store, away):
    (home / store).parent.mkdir()
    (home / store).write_bytes(b"this is not a database" * 100)
    (home / "mine" / "notes.txt").parent.mkdir(exist_ok=True)
    (home / "mine" / "notes.txt").write_text("the user's own")
    flag = ["--tracking-uri", f"sqlite:///{home / store}"] if store.startswith("mine") else []
    code, _, err = cli("search", "--trials", "1", *flag, *FAST)
    # not "start the server": the file, that it is damaged, and what to do: move the file, or mlruns/ with the
    # runs' files it holds, but never a folder of the user's other files (it named mine/ for mine/notes.db)
    assert code == 2 and f"{home / store} is damaged or unreadable" in err, err
    assert f"mv {home / away} {home / away}.damaged" in err, err
    assert "server" not in err and len(err.strip().splitlines()) == 1
    # the other store was not made before the damaged one was found (studies/ was, for a damaged mlruns/)
    assert written_files(home) == sorted([store, "mine/notes.txt"])


def test_a_store_another_process_is_writing_is_busy_not_damaged(tmp_path, monkeypatch):
    # the check before either store is made reads the file: while another process held its write lock (a
    # second search on the same folder), the busy file was called "damaged or unreadable"
    study_db = tmp_path / "unet-opt.db"
    open_storage(f"sqlite:///{study_db}")
    writer = sqlite3.connect(study_db, isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")  # as during another process's commit
    monkeypatch.setattr(sqlite3, "connect", functools.partial(sqlite3.connect, timeout=0.1))  # not its 5 s
    try:
        check_is_store_of(study_db, "studies", "an Optuna study storage", "--storage")  # left to its opener
    finally:
        writer.execute("ROLLBACK")
        writer.close()


@pytest.mark.slow
def test_a_store_of_the_other_kind_is_refused_and_left_as_it_was(searched_home, cli):
    mlflow_db, study_db = searched_home / "mlruns" / "mlflow.db", searched_home / "studies" / "unet-opt.db"
    before = mlflow_db.read_bytes(), study_db.read_bytes()
    code, _, err = cli("report", "--storage", f"sqlite:///{mlflow_db}")
    assert code == 2 and "is not an Optuna study storage" in err and "--storage" in err, err
    code, _, err = cli("search", "--tracking-uri", f"sqlite:///{study_db}", *FAST)
    assert code == 2 and "is not an MLflow store" in err and "--tracking-uri" in err, err
    assert (mlflow_db.read_bytes(), study_db.read_bytes()) == before  # no tables added to either


@pytest.mark.slow
def test_processes_opening_one_new_study_database_at_once_all_open_it(tmp_path):
    for round_ in range(4):  # the slower ones used to fail with "table studies already exists"
        assert open_together(lambda: open_storage(f"sqlite:///{tmp_path}/{round_}.db")) == ["ok"] * 3


@pytest.mark.slow
def test_processes_opening_one_new_mlflow_database_at_once_all_open_it_and_leave_it_sound(tmp_path):
    for round_ in range(3):  # racing migrations used to fail and could leave the database unusable for good
        uri, artifacts = f"sqlite:///{tmp_path}/{round_}/mlflow.db", tmp_path / str(round_) / "artifacts"
        assert open_together(lambda: Tracker(uri, "default", artifacts)) == ["ok"] * 3
        tracker = Tracker(uri, "default", artifacts)
        run = tracker.client.create_run(tracker.experiment_id)
        tracker.client.log_metric(run.info.run_id, "val_dice", 0.5, step=1)


def test_a_table_created_by_another_process_meanwhile_is_retried_other_errors_are_not(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    url = "postgresql://optuna@127.0.0.1:9/optuna"  # a new SQLite file is built aside, alone: servers race
    raced = sqlalchemy.exc.OperationalError("CREATE TABLE studies", {}, Exception("table studies already exists"))
    storage, calls = failing_once(raced)
    monkeypatch.setattr(optuna.storages, "RDBStorage", storage)
    assert open_storage(url) == "storage" and len(calls) == 2

    unreadable = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("unable to open database file"))
    storage, calls = failing_once(unreadable)
    monkeypatch.setattr(optuna.storages, "RDBStorage", storage)
    with pytest.raises(UserError, match="unable to open database file.*check --storage"):
        open_storage(url)
    assert len(calls) == 1  # a real error is reported at once, not retried


def test_a_best_config_never_replaces_a_database_even_with_overwrite(tmp_path):
    # found by a review: `report --best-config mlruns/mlflow.db --overwrite` turned the store into a TOML file
    from unet_opt.study.best_config import check_config_path

    store, config = tmp_path / "anything.db", tmp_path / "earlier.toml"
    sqlite3.connect(store).execute("CREATE TABLE t (x)").connection.close()
    config.write_text("[train]\n")
    with pytest.raises(UserError, match="is a database"):
        check_config_path(store, overwrite=True)
    store.rename(tmp_path / "best.toml")  # a database under the name the advice would give: another name is given
    with pytest.raises(UserError, match="e.g. --best-config best-config.toml"):
        check_config_path(tmp_path / "best.toml", overwrite=True)
    check_config_path(config, overwrite=True)  # an earlier config is replaced, as --overwrite says


def test_a_store_that_cannot_be_written_is_not_called_damaged(tmp_path):
    # a project folder on a read-only mount (a copy, a snapshot): its stores are sound, and the way out of a
    # damaged one (move it away, start a new study) would shelve them for nothing
    from unet_opt.config.paths import unreadable_store

    store = tmp_path / "mlruns" / "mlflow.db"
    store.parent.mkdir()
    store.write_bytes(b"")
    said = str(unreadable_store(store, "an MLflow store", sqlite3.OperationalError("attempt to write a readonly "
                                                                                   "database")))
    assert said.startswith(f"{store} cannot be written here (attempt to write a readonly database); it is not "
                           f"damaged: work on a copy in a folder you can write to (--home FOLDER)")
    assert "damaged.\n" not in said and "mv " not in said and "new --study" not in said


@pytest.mark.parametrize("folder", ["a#b", "a?b", "a%41b", "a b"])
def test_a_store_s_tables_are_read_where_it_is_whatever_its_path_holds(tmp_path, folder):
    """A '#' or '?' in the path once cut the read-only URI there: an empty file was made at the cut, and a
    moved project folder's store looked empty, so its paths were never moved with it."""
    from unet_opt.config.paths import sqlite_tables

    (tmp_path / folder).mkdir()
    with sqlite3.connect(tmp_path / folder / "x.db") as db:
        db.execute("CREATE TABLE studies (id INTEGER)")
    assert sqlite_tables(tmp_path / folder / "x.db") == {"studies"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder]  # nothing made beside it
