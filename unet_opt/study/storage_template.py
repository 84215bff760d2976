"""A new Optuna study database in milliseconds: a copy of an empty one, made once per Optuna version.

Optuna takes about half a second to create its tables and stamp their schema version in a new SQLite
file. The empty database it makes is kept in the user's cache, beside the MLflow template
(`config.paths.user_cache_folder`), and copied. Every copy is checked before it is used (SQLite's integrity
check, no study in it, and Optuna itself opening it without a schema complaint), so a template damaged,
cut short or of another schema is rebuilt, never what a storage starts from. Without a writable cache
Optuna makes the tables in place, as before.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sqlite3
from pathlib import Path

import optuna

from unet_opt.config.paths import create_atomically, user_cache_folder

log = logging.getLogger(__name__)


def make_tables(path: Path) -> None:
    """Optuna's own making of an empty study database at `path`."""
    optuna.storages.RDBStorage(f"sqlite:///{path}").engine.dispose()


def template_path() -> Path:
    return user_cache_folder() / f"optuna-schema-{optuna.__version__}.db"


def is_empty_study_database(path: Path) -> bool:
    """Whole (SQLite's integrity check), without a study, and opened by the installed Optuna as it is."""
    try:
        with contextlib.closing(sqlite3.connect(path)) as db:
            if db.execute("PRAGMA integrity_check").fetchall() != [("ok",)]:
                return False
            if db.execute("SELECT count(*) FROM studies").fetchone() != (0,):
                return False
        storage = optuna.storages.RDBStorage(f"sqlite:///{path}", skip_table_creation=True)
        storage.engine.dispose()
    except Exception:  # not SQLite, a table missing, another schema version
        return False
    return True


def new_study_database(path: Path) -> None:
    """An empty study database at `path` (a new file): a checked copy of the cached template, built there
    when it is missing or not good; made in place where the cache cannot be used."""
    for attempt in range(2):
        try:
            template = template_path()  # Path.home() fails where the user has no home
            if attempt or not template.is_file():
                template.parent.mkdir(parents=True, exist_ok=True)
                create_atomically(template, make_tables, replace=True)
            shutil.copyfile(template, path)
        except Exception as e:  # a read-only or full cache, or no home folder
            log.debug("no Optuna schema template in the user's cache (%s: %s)", type(e).__name__, e)
            break
        if is_empty_study_database(path):
            return
        log.debug("the Optuna schema template %s is damaged or out of date; rebuilding it", template)
    path.unlink(missing_ok=True)
    make_tables(path)
