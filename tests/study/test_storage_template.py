"""A new study storage is a copy of an empty Optuna database kept in the user's cache, one per Optuna
version; Optuna makes its tables (half a second) once for that copy, and again only where the copy is
missing or not good, or where the cache cannot be written."""

import contextlib
import sqlite3
from pathlib import Path

import optuna
import pytest

from unet_opt.study import storage_template
from unet_opt.study.storage import open_storage
from unet_opt.study.storage_template import is_empty_study_database, template_path


@pytest.fixture
def made(monkeypatch) -> list[str]:
    """The databases Optuna makes tables in from now on (it still does)."""
    done, real = [], storage_template.make_tables
    monkeypatch.setattr(storage_template, "make_tables", lambda path: (done.append(Path(path).name), real(path))[1])
    return done


def storage(folder: Path) -> optuna.storages.BaseStorage:
    folder.mkdir()
    return open_storage(f"sqlite:///{folder}/studies/unet-opt.db")


def test_the_second_storage_is_a_copy_of_the_cached_template_and_works(tmp_path, cache, made):
    first = storage(tmp_path / "a")
    assert template_path() == cache / "unet-opt" / f"optuna-schema-{optuna.__version__}.db"
    assert len(made) == 1 and made[0].startswith(template_path().name)  # built in the cache, not in place
    second = storage(tmp_path / "b")
    assert len(made) == 1
    for made_storage in (first, second):
        study = optuna.create_study(storage=made_storage, study_name="s", direction="maximize")
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
        assert len(study.trials) == 2
    assert not list((tmp_path / "b" / "studies").glob("*.partial-*"))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def with_a_study(path: Path) -> None:
    optuna.create_study(storage=f"sqlite:///{path}", study_name="left over")


def another_version(path: Path) -> None:  # whole, but stamped with a schema Optuna does not know
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE alembic_version SET version_num = 'v0.0.0.a'")


def garbage(path: Path) -> None:
    path.write_bytes(b"not a database" * 100)


@pytest.mark.parametrize("damage", [truncate, with_a_study, another_version, garbage])
def test_a_damaged_or_foreign_template_is_rebuilt_not_copied(tmp_path, cache, made, damage):
    storage(tmp_path / "a")
    damage(template_path())
    assert not is_empty_study_database(template_path())
    fresh = storage(tmp_path / "b")
    assert fresh.get_all_studies() == [] and is_empty_study_database(template_path())
    assert len(made) == 2  # the first template, and the one rebuilt


def test_without_a_writable_cache_the_tables_are_made_in_place(tmp_path, monkeypatch, made):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))  # a file: no folder can be made in it
    assert storage(tmp_path / "a").get_all_studies() == []
    assert len(made) == 1 and made[0].startswith("unet-opt.db.partial-")  # in place, under its temporary name
