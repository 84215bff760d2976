"""A project folder that was moved, copied or rsynced keeps working: its MLflow store is pointed at the
artifacts beside it.

MLflow stores absolute artifact locations (an experiment's, each run's, each logged model's). After a
move they name the old folder: reads would come from there (or fail on another machine) and a retrain's
files would be written there. Each command that opens a project's own store rewrites the old folder's
prefix to the new one first, in plain SQL: MLflow has no call that changes an artifact location.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from pathlib import Path
from urllib.parse import unquote, urlparse

from unet_opt.config.paths import sqlite_tables

log = logging.getLogger(__name__)

# (table, column) pairs holding absolute artifact locations in MLflow 3's SQL schema
LOCATION_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                    ("logged_models", "artifact_location"), ("model_versions", "storage_location"),
                    ("model_versions", "source"))


def local_path(location: str) -> Path | None:
    """The folder of a `file://` URI or a plain absolute path; None for a remote store (s3://...)."""
    if location.startswith("file://"):
        return Path(unquote(urlparse(location).path))
    return Path(location) if location.startswith("/") else None


def former_folders(db: sqlite3.Connection, mlruns: Path) -> set[Path]:
    """The mlruns folders this store was used at before: each unet-opt experiment lives at
    `<mlruns>/artifacts/<name>`, so its location names the folder it was created in."""
    found = set()
    for (location,) in db.execute("SELECT artifact_location FROM experiments"):
        path = local_path(location or "")
        if path is not None and path.parent.name == "artifacts" and path.parent.parent != mlruns:
            found.add(path.parent.parent)
    return found


def relocate_store(database: Path, artifact_root: Path) -> int:
    """Point a project folder's MLflow store (`<mlruns>/mlflow.db`, artifacts in `<mlruns>/artifacts`) at
    its own folder when it was moved; returns the number of locations rewritten. A store kept elsewhere
    (--tracking-uri) is left alone: its artifacts do not move with it."""
    mlruns = database.resolve().parent  # a relative URL (sqlite:///mlruns/mlflow.db) names the same store
    if artifact_root.resolve().parent != mlruns or not database.is_file():
        return 0
    tables = sqlite_tables(database)
    if "experiments" not in tables:
        return 0
    changed = 0
    with contextlib.closing(sqlite3.connect(database, timeout=60)) as db, db:  # one transaction
        for old in former_folders(db, mlruns):
            for table, column in LOCATION_COLUMNS:
                if table not in tables:
                    continue
                for before, after in ((old.as_uri() + "/", mlruns.as_uri() + "/"), (f"{old}/", f"{mlruns}/")):
                    changed += db.execute(
                        f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                        f"WHERE substr({column}, 1, ?) = ?", (after, len(before) + 1, len(before), before)).rowcount
            log.debug("this project folder was moved: its MLflow store now points at %s (was %s)", mlruns, old)
    return changed
