"""Where a project folder keeps its studies, runs and caches, and the URL helpers that go with it."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path


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
        return given or f"sqlite:///{self.studies / 'unet-opt.db'}"

    def tracking_uri(self, given: str | None = None) -> str:
        """`--tracking-uri` (or MLFLOW_TRACKING_URI, which the CLI reads) when given, else this folder's database."""
        return given or f"sqlite:///{self.mlruns / 'mlflow.db'}"


def redact_url(url: str) -> str:
    """`postgresql://me:secret@db/x` -> `postgresql://me:***@db/x`: passwords never reach logs or MLflow."""
    parts = urllib.parse.urlsplit(url)
    if not parts.password:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo.split(':')[0]}:***@{host}"))


def sqlite_file(url: str) -> Path | None:
    """The database file of a `sqlite:///PATH` storage or tracking URL; None for a server or other store."""
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
