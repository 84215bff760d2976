"""Where a project folder keeps its studies, runs and caches, and the URL helpers that go with it."""

from __future__ import annotations

import contextlib
import os
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from unet_opt.errors import UserError


@dataclass(frozen=True)
class Paths:
    """A project folder (`--home` or UNET_OPT_HOME, read by the CLI; default: the working directory)."""

    home: Path

    @classmethod
    def resolve(cls, home: str | Path | None) -> Paths:
        return cls(Path(home or ".").resolve())

    @property
    def studies(self) -> Path:
        return self.home / "studies"

    @property
    def mlruns(self) -> Path:
        return self.home / "mlruns"

    @property
    def cache(self) -> Path:
        return self.studies / "cache"

    @property
    def checkpoints(self) -> Path:
        return self.studies / "checkpoints"

    @property
    def artifacts(self) -> Path:
        return self.mlruns / "artifacts"

    def storage_url(self, given: str | None = None) -> str:
        """`--storage` when given, else this folder's SQLite file."""
        return given or self.sqlite_url(self.studies / "unet-opt.db")

    def tracking_uri(self, given: str | None = None) -> str:
        """`--tracking-uri` (or MLFLOW_TRACKING_URI, which the CLI reads) when given, else this folder's database."""
        return given or self.sqlite_url(self.mlruns / "mlflow.db")

    def sqlite_url(self, path: Path) -> str:
        if any(c in str(path) for c in "?%#"):  # a URL's query, escape or fragment: the database would land elsewhere
            raise UserError(f"the folder {self.home} has '?', '%' or '#' in its path, which a SQLite URL cannot hold; "
                            f"rename it, use another --home, or pass both --storage and --tracking-uri")
        return f"sqlite:///{path}"


# user:password@ in any URL (a password may hold '#', '/' or '?'; an '@' inside one is taken as part of it
# while another '@' follows before the path)
USERINFO_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*):(?:[^\s@]|@(?=[^\s@/]*@))+@")
SECRET_KEY = r"[a-z_]*(?:password|passwd|pwd|secret|token|apikey|api_key)[a-z_]*"
# key=value wherever it stands: a URL's query (?sslpassword=x), a libpq keyword string (host=h password=x),
# a repr (password='x'), a URL-encoded option (options=-c%20password%3Dx), a dict or JSON ("password": "x").
# The value is quoted (and may then hold spaces) or runs to the next separator, an encoded space or '&'
SECRET_PARAMETER = re.compile(
    rf"((?<![a-z_])(?:{SECRET_KEY})|(?<=[?&;])(?:pass|auth|key))(\s*=\s*|%3D|[\"']?\s*:\s*)"
    r"('[^']*'|\"[^\"]*\"|(?:(?!%20|%26)[^&;#\s,)'\"])*)", re.IGNORECASE)


def redact_url(text: str) -> str:
    """Any URL's password in `text` (a URL, an exception message, a log line) replaced by ***:
    `postgresql://me:secret@db/x?sslpassword=y` -> `postgresql://me:***@db/x?sslpassword=***`.
    The one redaction for everything that leaves the process: logs, errors, fail reasons, params, tags, files."""
    return SECRET_PARAMETER.sub(r"\1\2***", USERINFO_PASSWORD.sub(r"\1:***@", text))


def sqlite_file(url: str) -> Path | None:
    """The database file of a `sqlite:///PATH` storage or tracking URL; None for a server or other store."""
    return Path(url.removeprefix("sqlite:///").split("?")[0]) if url.startswith("sqlite:///") else None


def user_cache_folder() -> Path:
    """unet-opt's folder in the user's cache: $XDG_CACHE_HOME/unet-opt, else ~/.cache/unet-opt."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(base) if os.path.isabs(base) else Path.home() / ".cache") / "unet-opt"


def create_atomically(final: Path, build: Callable[[Path], None], replace: bool = False) -> None:
    """Make the file `final` with `build(path)` at a temporary name beside it, then link it into place:
    a kill at any moment leaves either no `final` or a whole one. If another process put one there
    meanwhile, that one is kept; with `replace`, it is replaced (a cache's file, where any whole one
    does). Partial files of killed processes are removed first."""
    for stale in final.parent.glob(f"{final.name}.partial-*"):  # SQLite's -journal files included
        pid = re.match(r"\d+", stale.name.removeprefix(f"{final.name}.partial-"))
        if pid and not os.path.exists(f"/proc/{pid.group()}"):
            stale.unlink(missing_ok=True)
    partial = final.with_name(f"{final.name}.partial-{os.getpid()}")
    partial.unlink(missing_ok=True)
    try:
        build(partial)
        if replace:
            os.replace(partial, final)
        else:
            os.link(partial, final)  # fails if `final` exists: never replaces another process's store
    except FileExistsError:
        pass
    finally:
        partial.unlink(missing_ok=True)


def check_store(url: str, flag: str, table: str, what: str) -> None:
    """A local store's folder can be made (it exists, or its parent does: `studies/` in a project folder),
    and a file already there is `what` (it holds `table`). Both stores are checked before either is made:
    a mistyped path must leave nothing behind."""
    path = sqlite_file(url)
    if path:
        check_folder_can_be_made(path.parent, flag)
        if path.exists():
            check_is_store_of(path, table, what, flag)


def unreadable_store(path: Path, what: str, error: Exception) -> UserError:
    """The one line for a store's file that cannot be read, and the way out. What to move away is the file,
    or its folder where that holds nothing else but the store's own files (`mlruns/`: an MLflow store's runs'
    files go with their database); never a folder of the user's other files."""
    if "readonly database" in str(error):  # SQLite's word for a sound file on a read-only mount or folder
        return UserError(f"{path} cannot be written here ({str(error).splitlines()[0][:100]}); it is not damaged: "
                         f"work on a copy in a folder you can write to (--home FOLDER), or read it as it is with "
                         f"`unet-opt report` and `unet-opt ui`")
    own = {path.name, f"{path.name}-journal", "artifacts"}
    folder_is_its_own = what == "an MLflow store" and {p.name for p in path.parent.iterdir()} <= own
    away = path.parent if folder_is_its_own else path
    detail = f"{type(error).__name__}: {redact_url(str(error)).splitlines()[0][:150]}" if str(error) else \
        type(error).__name__
    runs = " (its MLflow runs stay where they are)" if what == "an Optuna study storage" else ""
    return UserError(f"{path} is damaged or unreadable as {what} ({detail}); restore it from a backup, or move it "
                     f"away (mv {away} {away}.damaged) and start again with a new --study name{runs}")


def check_folder_can_be_made(folder: Path, flag: str) -> None:
    if not folder.is_dir() and not folder.parent.is_dir():
        raise UserError(f"folder {folder} does not exist; create it first or fix {flag}")


def make_folder(folder: Path, flag: str) -> None:
    """The folder a store's file lives in, made after `check_store`'s rule."""
    check_folder_can_be_made(folder, flag)
    folder.mkdir(exist_ok=True)


def sqlite_tables(path: Path) -> set[str]:
    """The tables of an existing SQLite file (read-only); empty for an empty file."""
    import sqlite3

    # a URI, for mode=ro: its path escaped, or a '#' or '?' in it would cut it (and create the file cut there)
    with contextlib.closing(sqlite3.connect(f"file:{urllib.parse.quote(str(path))}?mode=ro", uri=True)) as db:
        return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def check_is_store_of(path: Path, table: str, what: str, flag: str) -> None:
    """Refuse an existing SQLite file that is another tool's database (it would get our tables added), or no
    database at all (before either store is made: a refused command writes nothing)."""
    import sqlite3

    try:
        tables = sqlite_tables(path)
    except Exception as e:
        if getattr(e, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return  # another process is writing it: busy, not damaged; the store's opener waits for it
        raise unreadable_store(path, what, e) from None
    if tables and table not in tables:
        raise UserError(f"{path} is not {what} (it holds other tables, e.g. {sorted(tables)[0]}); pass the "
                        f"right file with {flag}")
