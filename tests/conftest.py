import os
from pathlib import Path

import pytest

from unet_opt.cli import main

# Tiny trials: one image size, few epochs, few images. A trial takes a second or two on a CPU.
FAST = ["--set", "space.image_size.choices=[32]", "--set", "space.epochs.low=2", "--set", "space.epochs.high=3",
        "--set", "data.synthetic_images=24", "--set", "model.base_channels=8"]


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty project folder as the working directory, with no MLflow/unet-opt settings leaking in."""
    for var in ("MLFLOW_TRACKING_URI", "UNET_OPT_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def cli(capsys):
    """Run `unet-opt ARGS` in this process: returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exit_info:
            main(list(args))
        out, err = capsys.readouterr()
        return exit_info.value.code, out, err

    return run


def written_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def pytest_configure(config):
    os.environ.setdefault("PYTHONHASHSEED", "0")
