"""`unet-opt figures`: a pruned trial's figures, drawn into its run when they are wanted."""

import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

import fits
import pytest
from conftest import FAST_SETS, run_search
from mlflow.tracking import MlflowClient

from unet_opt.tracking.report_files import RunReport, write_report
from unet_opt.tracking.writer import SPOOL_PREFIX

PRUNED = {"config.toml", "confusion_matrix.csv", "per_class.csv", "figures.npz"}
FIGURES = {"learning_curves.png", "confusion_matrix.png", "predictions.png"}


@pytest.mark.slow
def test_a_pruned_trial_s_figures_are_drawn_into_its_run_on_demand(home, cli, capsys):
    run_search(home, 2, "space.epochs.low=3", fit=fits.stop_after_first_epoch)
    pruned_lines = [line for line in capsys.readouterr().err.splitlines() if " pruned val_dice" in line]
    assert len(pruned_lines) == 2  # each with the value it reached: what the pruner judged it by
    assert all(re.search(r"trial #\d pruned val_dice 0\.\d{4} \(best epoch 1\)", line) for line in pruned_lines)
    client = MlflowClient(f"sqlite:///{home}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("unet-opt-default").experiment_id],
                              "tags.`optuna.state` = 'PRUNED'")
    assert len(runs) == 2
    for run in runs:  # the search left the tables, and what the figures are drawn from
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == PRUNED
        # why it stopped, in the pruner's words as the study has them (it said "callback", a review found)
        assert run.data.tags["stop_reason"] == run.data.tags["optuna.state_reason"]
        assert run.data.tags["stop_reason"].startswith("pruned after epoch 1: ")
    code, out, err = cli("figures", "--trial", "1")
    assert code == 0 and "figures drawn into the runs of 1 trial(s): #1" in out, err
    files = {r.data.tags["optuna.trial"]: {a.path for a in client.list_artifacts(r.info.run_id)} for r in runs}
    assert files == {"0": PRUNED, "1": PRUNED | FIGURES}
    code, out, _ = cli("figures")  # every trial still without them
    assert code == 0 and "1 trial(s): #0" in out
    code, out, _ = cli("figures")
    assert code == 0 and "every trial's figures are drawn already" in out
    code, out, _ = cli("figures", "--trial", "0", "--trial", "0")  # named twice, said once (a review)
    assert code == 0 and out.count("trial #0: drawn already") == 1
    code, _, err = cli("figures", "--trial", "7")
    assert code == 2 and err.startswith("error: study 'default' has no trial #7")


def test_figures_writes_what_a_killed_search_left_and_names_the_trials_left_without_files(searched_home, cli,
                                                                                          tmp_path, monkeypatch):
    # a SIGKILL to a search's process group kills its writer too: the trials' files it had not written stay
    # spooled in the temporary folder; `figures` said "every trial's figures are drawn already" for them
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    assert cli("figures")[1] == "study 'default': every trial's figures are drawn already\n"
    client = MlflowClient(f"sqlite:///{searched_home}/mlruns/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("unet-opt-default").experiment_id],
                             "tags.`optuna.trial` = '0'")[0]
    folder = Path(urllib.parse.urlparse(run.info.artifact_uri).path)
    shutil.rmtree(folder)  # its files were never written
    code, out, _ = cli("figures")
    assert code == 0 and out == ("trial #0: complete, with no files (its search was stopped before it wrote them)\n"
                                 "study 'default': every other trial's figures are drawn already\n")
    spool_dead_report(spool, f"sqlite:///{searched_home}/mlruns/mlflow.db", run.info.run_id, folder)
    code, out, _ = cli("figures")
    assert code == 0 and out == ("wrote the files of 1 run(s) that a killed search had left unwritten\n"
                                 "study 'default': every trial's figures are drawn already\n")
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"config.toml", "learning_curves.png"}
    assert not list(spool.iterdir())


def test_figures_while_a_search_writes_a_trial_s_files_says_so_and_leaves_them_to_it(searched_home, cli, tmp_path,
                                                                                   monkeypatch):
    # found by a review: `figures` during a search said "complete, with no files (its search was stopped before
    # it wrote them)" and "every other trial's figures are drawn already" of files its writer had still to write
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    client = MlflowClient(f"sqlite:///{searched_home}/mlruns/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("unet-opt-default").experiment_id],
                             "tags.`optuna.trial` = '0'")[0]
    folder = Path(urllib.parse.urlparse(run.info.artifact_uri).path)
    shutil.move(folder, tmp_path / "kept")  # not written yet: a live writer (this process) has it spooled
    (spool / f"{SPOOL_PREFIX}{os.getpid()}-report-{run.info.run_id}-k2x9.pickle").write_bytes(b"")
    code, out, _ = cli("figures")
    assert code == 0 and out == ("study 'default': 1 trial(s) still running or having their files written by a "
                                 "search; run `unet-opt figures` again once it ends\n")
    code, out, _ = cli("figures", "--trial", "0")
    assert code == 0 and out == "trial #0: complete, its files being written by its search\n"
    assert not folder.exists() and len(list(spool.iterdir())) == 1  # left to the writer
    shutil.move(tmp_path / "kept", folder)  # the study is shared with the other tests


def test_a_spooled_report_is_named_by_its_run(tmp_path, monkeypatch):
    from unet_opt.tracking.writer import ArtifactWriter, runs_being_written

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    writer = ArtifactWriter("sqlite:///nowhere.db")
    sent = []

    class Pipe:
        def send_bytes(self, data):
            sent.append(data)

    class Alive:
        pid = os.getpid()

        def is_alive(self):
            return True

    writer.process, writer.conn = Alive(), Pipe()
    writer.send(("report", "sqlite:///nowhere.db", "0123abcd", print, (), None))
    writer.send(("call", print, ()))
    assert runs_being_written() == {"0123abcd"} and len(sent) == 2


def spool_dead_report(spool: Path, tracking_uri: str, run_id: str, folder: Path) -> Path:
    """A run's report as a search's writer left it spooled when both were killed."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    report = RunReport("a = 1\n", "val_dice", [{"train_loss": 1.0, "val_dice": 0.5}], 1)
    spooled = spool / f"{SPOOL_PREFIX}{dead.stdout.strip()}-report-x.pickle"
    spooled.write_bytes(pickle.dumps(("report", tracking_uri, run_id, write_report, (report,), folder)))
    return spooled


def lose_files_of_trial_0(home: Path) -> tuple[MlflowClient, str, Path]:
    """Trial #0's run, its files removed: as a search killed with its writer leaves it."""
    client = MlflowClient(f"sqlite:///{home}/mlruns/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("unet-opt-default").experiment_id],
                             "tags.`optuna.trial` = '0'")[0]
    folder = Path(urllib.parse.urlparse(run.info.artifact_uri).path)
    shutil.rmtree(folder)
    return client, run.info.run_id, folder


@pytest.mark.slow
def test_the_next_search_writes_what_a_search_killed_with_its_writer_left(searched_home, cli, tmp_path,
                                                                          monkeypatch):
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    cli("figures")  # the copied folder's store now points at its own artifacts
    client, run_id, folder = lose_files_of_trial_0(searched_home)
    spool_dead_report(spool, f"sqlite:///{searched_home}/mlruns/mlflow.db", run_id, folder)
    code, out, err = cli("search", "--trials", "1", "--pruner", "none", *[a for s in FAST_SETS for a in ("--set", s)])
    assert code == 0 and "nothing to do" in out + err, err  # and yet the killed search's files are written
    assert "writing the files of 1 run(s) that a killed search left unwritten" in err
    assert {a.path for a in client.list_artifacts(run_id)} == {"config.toml", "learning_curves.png"}
    assert not list(spool.iterdir())


def test_a_search_refused_for_bad_input_leaves_a_killed_search_s_files_to_the_next_command(searched_home, cli,
                                                                                           tmp_path, monkeypatch):
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    cli("figures")
    _, run_id, folder = lose_files_of_trial_0(searched_home)
    spooled = spool_dead_report(spool, f"sqlite:///{searched_home}/mlruns/mlflow.db", run_id, folder)
    (tmp_path / "empty").mkdir()
    code, _, err = cli("search", "--data", str(tmp_path / "empty"), "--trials", "1")
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert spooled.exists() and not folder.exists()  # nothing written by a refused command
