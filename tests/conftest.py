import os
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest

from unet_opt import runtime
from unet_opt.cli.app import main

# Tiny trials: one image size, few epochs, few images. A trial takes a second or two on a CPU.
FAST_SETS = ["space.image_size.choices=[32]", "space.epochs.low=2", "space.epochs.high=3",
             "data.synthetic_images=24", "model.base_channels=8"]
FAST = [arg for item in FAST_SETS for arg in ("--set", item)]


@pytest.fixture(scope="session", autouse=True)
def user_cache(tmp_path_factory):
    """The user's cache (unet-opt's MLflow schema template; torch's and matplotlib's too) in a folder of the
    session's, never ~/.cache: shared by every test and command of the session, as a user's is."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("user-cache")))
        yield


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty user cache of this test's own (where the stores' schema templates are kept)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty project folder as the working directory, with no MLflow/unet-opt settings leaking in."""
    for var in ("MLFLOW_TRACKING_URI", "UNET_OPT_HOME", "UNET_OPT_STORAGE", "UNET_OPT_QUIET"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def cli(capsys):
    """Run `unet-opt ARGS` in this process: returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()  # what ran before (a library call's log lines) is not this command's output
        with pytest.raises(SystemExit) as exit_info:
            main(list(args))
        out, err = capsys.readouterr()
        return exit_info.value.code, out, err

    return run


def run_search(home: Path, trials: int, *sets: str, fit=None, workers: int = 1, **placement):
    """`unet-opt search --trials N --set ...` as a library call, with a stand-in `fit` injected (the CLI
    has no way to pass one). Returns the summary."""
    from unet_opt.config.paths import Paths
    from unet_opt.config.space_file import load_config
    from unet_opt.core.train import fit_job
    from unet_opt.parallel.placement import plan
    from unet_opt.study.search import run_search as run

    runtime.setup()  # as the CLI does: log to this test's stderr
    cfg = load_config("default", {"search.trials": trials}, [*FAST_SETS, *sets])
    return run(cfg, Paths.resolve(home), plan("cpu", None, placement.get("procs")), workers, fit=fit or fit_job)


@pytest.fixture(scope="session")
def searched_folder(tmp_path_factory) -> Path:
    """A project folder after `unet-opt search --trials 1 --pruner none` on tiny data, made once per session."""
    folder = tmp_path_factory.mktemp("searched")
    run_search(folder, 1, 'search.pruner="none"')
    return folder


@pytest.fixture
def searched_home(home, searched_folder) -> Path:
    """`home` holding a copy of the searched folder's stores: a copied project folder, which the first
    command that opens its MLflow store points at its own artifacts."""
    for name in ("studies", "mlruns"):
        shutil.copytree(searched_folder / name, home / name)
    return home


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free on `host` now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def interruptible() -> None:
    """`preexec_fn` for a child that a test sends SIGINT: a shell's background job (`cmd &`, as CI may run
    the suite) ignores SIGINT, and a Python child would inherit that and never see Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def written_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def pytest_configure(config):
    os.environ.setdefault("PYTHONHASHSEED", "0")
    # the processes tests start (in other folders too) import this checkout's package, whatever the venv's
    # editable install points at
    root = str(Path(__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
    runtime.setup()  # as the CLI entry does, before any test module imports MLflow


def children_of(pid: int, with_pid: bool = False) -> list[str]:
    """Command lines of the live processes whose parent is `pid`, but for multiprocessing's resource
    tracker (one per process that ever spawned, it lives as long as that process); `with_pid`: each
    preceded by its pid."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                command = (entry / "cmdline").read_text().replace("\0", " ")
            except OSError:
                continue
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if int(ppid) == pid and state != "Z" and "resource_tracker" not in command:
                found.append(f"{entry.name} {command}" if with_pid else command)
    return found


def processes_in(folder) -> list[str]:
    """Command lines of the live processes working in `folder` (the search, its ranks, its writer)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and Path(os.readlink(entry / "cwd")).is_relative_to(folder):
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    found.append((entry / "cmdline").read_text().replace("\0", " "))
        except OSError:
            continue
    return found


def wait_until(condition, timeout: float = 60.0, every: float = 0.05):
    """`condition()`'s first true value, asked every `every` seconds for at most `timeout` seconds (its last
    value after that): tests wait for what they need, not for a guessed number of seconds."""
    deadline = time.monotonic() + timeout
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(every)
    return value
