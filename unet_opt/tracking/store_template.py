"""A new MLflow store in milliseconds: a copy of an empty, migrated database, made once per MLflow version.

MLflow's own migrations take 1-2 s for every new store. The empty database they make is kept in the
user's cache (`$XDG_CACHE_HOME/unet-opt/`, else `~/.cache/unet-opt/`) and copied; every copy is checked
(SQLite's integrity check, the Default experiment, the newest schema revision of the installed MLflow),
so a template damaged or out of date is rebuilt, never what a store starts from. Without a writable
cache, a store is migrated in place as before.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sqlite3
import time
from pathlib import Path

import mlflow

from unet_opt.config.paths import create_atomically, user_cache_folder

log = logging.getLogger(__name__)


def new_store(path: Path) -> None:
    """A migrated MLflow database at `path`: a copy of this MLflow version's empty one, kept in the user's
    cache (milliseconds), or made by MLflow's migrations where there is none (1-2 s). Its "Default"
    experiment keeps files in the folder's artifacts/0, not in `./mlruns/0` of whatever directory the
    command ran in, and is dated now, not when the cached copy was made."""
    if not copy_schema_template(path):
        migrate(path)
    now = int(time.time() * 1000)
    location = (path.resolve().parent / "artifacts" / "0").as_uri()  # resolved: a relative --tracking-uri too
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE experiments SET artifact_location = ?, creation_time = ?, last_update_time = ? "
                   "WHERE experiment_id = 0", (location, now, now))


def migrate(path: Path) -> None:
    """MLflow's own making of a database at `path`: its tables, every migration since MLflow 1.0, the
    Default experiment. Not through `MlflowClient`, which would keep its store of this URI for the rest
    of the process, open on a file that is moved away next."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    SqlAlchemyStore(f"sqlite:///{path}", (path.resolve().parent / "artifacts").as_uri()).engine.dispose()


def schema_template_path() -> Path:
    """The cached empty database of the installed MLflow version: one file per version."""
    return user_cache_folder() / f"mlflow-schema-{mlflow.__version__}.db"


def newest_schema_revision() -> str | None:
    """The alembic revision a database of the installed MLflow must have; None where it cannot be told
    (MLflow moved its helper), and then no template is used."""
    try:
        from mlflow.store.db.utils import _get_latest_schema_revision

        return _get_latest_schema_revision()
    except Exception:
        log.debug("the MLflow schema revision is unknown; stores are made by migrations", exc_info=True)
        return None


def schema_revision(path: Path) -> str | None:
    """The alembic revision of the MLflow database at `path` when it is whole (SQLite's integrity check),
    has every table and column the installed MLflow's models name, and holds the Default experiment and
    nothing else; None for a damaged, cut short, altered, used or foreign file."""
    try:
        with contextlib.closing(sqlite3.connect(path)) as db:
            if db.execute("PRAGMA integrity_check").fetchall() != [("ok",)]:
                return None
            missing = missing_columns(db)
            if missing:
                log.debug("the MLflow database %s lacks %s", path, ", ".join(missing[:5]))
                return None
            if db.execute("SELECT count(*), min(experiment_id) FROM experiments").fetchone() != (1, 0):
                return None  # the Default experiment, and nothing else
            if db.execute("SELECT count(*) FROM runs").fetchone() != (0,):
                return None
            versions = db.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.Error:
        return None
    return versions[0][0] if len(versions) == 1 else None


def expected_columns() -> dict[str, set[str]]:
    """The tables and columns the installed MLflow's SQL models use (tracking and registry): what a store
    must have for runs, metrics, params, tags and models to be logged to it."""
    import mlflow.store.model_registry.dbmodels.models  # noqa: F401  (registers the registry's tables)
    import mlflow.store.tracking.dbmodels.models  # noqa: F401  (registers the tracking tables)
    from mlflow.store.db.base_sql_model import Base

    return {name: {column.name for column in table.columns} for name, table in Base.metadata.tables.items()}


def missing_columns(db: sqlite3.Connection) -> list[str]:
    """`table` or `table.column` for each table or column of `expected_columns` that `db` lacks."""
    present = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    missing = []
    for table, columns in sorted(expected_columns().items()):
        if table not in present:
            missing.append(table)
            continue
        have = {row[1] for row in db.execute(f'PRAGMA table_xinfo("{table}")')}  # generated columns too
        missing += [f"{table}.{c}" for c in sorted(columns - have)]
    return missing


def build_schema_template(template: Path, revision: str) -> None:
    """The empty database, migrated by MLflow at a temporary name in the cache, checked, then renamed into
    place: a kill leaves the former template or the new one, never a partial one."""
    def build(partial: Path) -> None:
        migrate(partial)
        if schema_revision(partial) != revision:
            raise RuntimeError(f"MLflow made a database at revision {schema_revision(partial)}, not {revision}")

    template.parent.mkdir(parents=True, exist_ok=True)
    create_atomically(template, build, replace=True)


def copy_schema_template(path: Path) -> bool:
    """`path` made a copy of the installed MLflow's empty database, kept in the user's cache and built
    there when it is missing, damaged or of another schema revision. The copy itself is checked, so a
    template changed or damaged at any moment is never what a store starts from. False where there is no
    good copy to be had (an unwritable cache): `path` is then left absent, to be migrated."""
    revision = newest_schema_revision()
    if revision is None:
        return False
    for attempt in range(2):
        try:
            template = schema_template_path()  # Path.home() fails where the user has no home
            if attempt or not template.is_file():
                build_schema_template(template, revision)
            shutil.copyfile(template, path)
        except Exception as e:  # a read-only or full cache, or no home folder: the store is migrated in place
            log.debug("no MLflow schema template in the user's cache (%s: %s)", type(e).__name__, e)
            path.unlink(missing_ok=True)
            return False
        if schema_revision(path) == revision:
            return True
        path.unlink(missing_ok=True)
        log.debug("the MLflow schema template %s is damaged or out of date; rebuilding it", template)
    return False
