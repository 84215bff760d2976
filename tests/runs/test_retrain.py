"""From the best trial to a registered model: retrain, evaluate, predict."""

import contextlib
import io
import os
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import fits
import mlflow
import mlflow.pyfunc
import mlflow.pytorch
import numpy as np
import optuna
import pytest
import torch
from conftest import FAST, run_search, written_files
from mlflow.tracking import MlflowClient
from PIL import Image

from unet_opt.cli.app import main
from unet_opt.config.space_file import load_config
from unet_opt.core.data import ClassTable
from unet_opt.core.model import build_model
from unet_opt.runs.checkpoint import load_checkpoint, save_checkpoint


def retrain_runs(home):
    client = MlflowClient(f"sqlite:///{home}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("unet-opt-default")
    runs = client.search_runs([exp.experiment_id], "tags.`unet_opt.role` = 'retrain'", order_by=["start_time"])
    return client, runs


@pytest.fixture(scope="module")
def retrained(tmp_path_factory) -> tuple[Path, str]:
    """`unet-opt search --trials 2 --pruner none` then `unet-opt retrain --best` in a new folder, once for the
    tests below: (the folder, what retrain printed). Each test works in a copy of it."""
    folder = tmp_path_factory.mktemp("retrained")
    with pytest.MonkeyPatch.context() as patch:
        for var in ("MLFLOW_TRACKING_URI", "UNET_OPT_HOME", "UNET_OPT_STORAGE"):
            patch.delenv(var, raising=False)
        patch.chdir(folder)
        run_search(folder, 2, 'search.pruner="none"')
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as done:
            main(["retrain", "--best"])
    assert done.value.code == 0, err.getvalue()
    return folder, out.getvalue() + err.getvalue()


def shown_test_dice(out: str) -> float:
    """The test Dice that `evaluate` printed in its table."""
    return float(next(line.split()[1] for line in out.splitlines() if line.startswith("test_dice ")))


@pytest.fixture
def champion(retrained, home) -> Path:
    """`home` holding a copy of the retrained folder (a copied project folder works on its own files)."""
    for name in ("studies", "mlruns"):
        shutil.copytree(retrained[0] / name, home / name)
    return home


@pytest.mark.slow
def test_retrain_registers_a_champion_with_its_test_files(retrained, champion):
    assert "Successfully registered" not in retrained[1]  # MLflow's own lines: the summary says it once
    client, runs = retrain_runs(champion)
    run = runs[0]
    # the registered version points at the retrain run and carries the champion alias
    version = client.get_model_version_by_alias("unet-opt-default", "champion")
    assert version.run_id == run.info.run_id and run.info.status == "FINISHED"
    assert run.data.tags["source_trial"] in {"0", "1"}
    assert f"see it:           `unet-opt ui`, then open http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/" \
           f"runs/{run.info.run_id}?workflowType=machine_learning" in retrained[1]  # (a review: no way to its run)
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"test_confusion_matrix.png", "test_confusion_matrix.csv", "test_per_class.csv", "test_predictions.png",
            "learning_curves.png", "config.toml", "checkpoint"} <= names


@pytest.mark.slow
def test_the_registered_model_loads_in_mlflow_and_takes_any_size(champion, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{champion}/mlruns/mlflow.db")  # undone after the test
    mlflow.set_tracking_uri(f"sqlite:///{champion}/mlruns/mlflow.db")
    model = mlflow.pytorch.load_model("models:/unet-opt-default@champion")
    logits = model(torch.rand(2, 3, 32, 48) * 2 - 1)
    # the MLflow model predicts one logit per drone class
    assert logits.shape == (2, 24, 32, 48)
    # and, through pyfunc and its signature, at any size that is a multiple of 2**depth
    pyfunc = mlflow.pyfunc.load_model("models:/unet-opt-default@champion")
    assert pyfunc.predict(np.zeros((1, 3, 128, 192), np.float32)).shape == (1, 24, 128, 192)


@pytest.mark.slow
def test_evaluate_reproduces_the_retrain_s_test_dice_from_the_registry_and_the_checkpoint(champion, cli):
    _, runs = retrain_runs(champion)
    run, test_dice = runs[0], runs[0].data.metrics["test_dice"]
    # evaluate reproduces the test Dice the retrain logged, to 4 decimals
    code, out, _ = cli("evaluate", "models:/unet-opt-default@champion", "--split", "test")
    assert code == 0
    assert round(shown_test_dice(out), 4) == round(test_dice, 4)
    assert (champion / "evaluation" / "confusion_matrix.png").is_file()
    # the standalone checkpoint loads with weights_only=True and gives the same scores
    ckpt = next((champion / "studies" / "checkpoints").glob("*.pt"))
    assert load_checkpoint(ckpt).cfg.train.epochs == int(run.data.params["train.epochs"])
    code, _, err = cli("evaluate", str(ckpt))  # evaluation/ holds the files of the first evaluate
    assert code == 2 and "confusion_matrix.png exists already; pass --overwrite" in err
    code, out, _ = cli("evaluate", str(ckpt), "--overwrite")
    assert code == 0 and round(shown_test_dice(out), 4) == round(test_dice, 4)  # not a prefix of the text:
    # a test Dice of 0.04699 is printed 0.0470
    # a model name that does not exist is named as such, before the files already there
    code, _, err = cli("evaluate", "models:/nope@champion")
    assert code == 2 and "model 'models:/nope@champion' not found" in err
    # a retrain learned from val: its val scores are said to be no held-out figure
    code, out, _ = cli("evaluate", str(ckpt), "--split", "val", "--overwrite")
    assert code == 0 and "note: this model learned from the val split (it trained on train + val)" in out
    code, out, _ = cli("evaluate", str(ckpt), "--split", "all", "--overwrite")  # found by a review: no note
    assert code == 0 and "note: this model learned from the train + val splits (it trained on train + val): its " \
                         "scores over all images are not held out" in out
    (champion / "afile").touch()  # found by a review: a traceback, after every image was scored
    code, _, err = cli("evaluate", str(ckpt), "--out", "afile/sub")
    assert code == 2 and err == "error: afile is a file, not a folder; pass another --out folder\n", err


@pytest.mark.slow
def test_predict_writes_masks_at_each_image_s_own_size_and_never_over_a_file(champion, cli):
    home = champion
    # masks at each input's own size, for a 3:2 photo and a square one
    Image.fromarray(np.full((120, 180, 3), 90, np.uint8)).save(home / "wide.jpg")
    Image.fromarray(np.full((77, 77, 3), 160, np.uint8)).save(home / "square.png")
    code, _, err = cli("predict", "models:/unet-opt-default@champion", "wide.jpg", "square.png", "--out", "p")
    assert code == 0, err
    assert Image.open(home / "p" / "wide_mask.png").size == (180, 120)
    assert Image.open(home / "p" / "square_color.png").size == (77, 77)
    mask = np.asarray(Image.open(home / "p" / "wide_mask.png"))
    colour = np.asarray(Image.open(home / "p" / "wide_color.png"))
    palette = np.array(ClassTable.drone().colors, np.uint8)
    # every pixel's colour is its class's colour in the table
    assert np.array_equal(colour, palette[mask])
    # outputs never collide or silently replace a file
    (home / "b").mkdir()
    Image.fromarray(np.full((77, 77, 3), 10, np.uint8)).save(home / "b" / "wide.png")
    code, _, err = cli("predict", "models:/unet-opt-default@champion", "wide.jpg", "b/wide.png", "--out", "q")
    assert code == 2 and "two inputs would both write q/wide_mask.png" in err and not (home / "q").exists()
    code, _, err = cli("predict", "models:/unet-opt-default@champion", "wide.jpg", "--out", "p")
    assert code == 2 and "p/wide_mask.png exists already" in err
    assert cli("predict", "models:/unet-opt-default@champion", "wide.jpg", "--out", "p", "--overwrite")[0] == 0
    (home / "afile").touch()  # found by a review: tracebacks
    (home / "dangling").symlink_to(home / "gone")
    for out, message in (("afile/sub", "afile is a file, not a folder; pass another --out folder"),
                         ("/proc/x", "cannot write in /proc ("),
                         ("/sys/kernel", "cannot write in /sys/kernel ("),  # root may, by its permissions
                         ("dangling", f"dangling is a link to {home / 'gone'}, which does not exist")):
        code, _, err = cli("predict", "models:/unet-opt-default@champion", "wide.jpg", "--out", out)
        assert code == 2 and err.startswith(f"error: {message}") and len(err.splitlines()) == 1, err


@pytest.mark.slow
def test_the_same_seed_retrains_to_the_same_test_dice(champion, cli):
    assert cli("retrain", "--best", "--name", "again")[0] == 0
    _, runs = retrain_runs(champion)
    assert runs[1].data.metrics["test_dice"] == runs[0].data.metrics["test_dice"]


def test_binary_prediction_is_zero_or_one_at_full_size(home, cli):
    cfg = load_config("binary", sets=["data.image_size=32"])
    model = build_model(cfg.model, out_channels=1)
    classes = ClassTable(("background", "roof"), ((0, 0, 0), (255, 255, 255)))
    save_checkpoint(home / "binary.pt", model, cfg, classes, True, {"train": [], "val": [], "test": []})
    Image.fromarray((np.random.default_rng(0).random((90, 60, 3)) * 255).astype(np.uint8)).save(home / "tall.png")
    code, _, err = cli("predict", "binary.pt", "tall.png", "--out", "p")
    assert code == 0, err
    mask = np.asarray(Image.open(home / "p" / "tall_mask.png"))
    assert mask.shape == (90, 60) and set(np.unique(mask)) <= {0, 1}


def searched(*case):  # needs the session's searched folder: one full search, so in the slow selection
    return pytest.param(*case, marks=pytest.mark.slow)


@pytest.mark.parametrize("setup, args, message", [
    ("none", ["retrain", "--best"], "no study storage"),
    searched("search", ["retrain", "--best", "--study", "nope"], "no study named 'nope'"),
    pytest.param("failed", ["retrain", "--best"], "has no complete trial", marks=pytest.mark.slow),  # a search
    ("none", ["evaluate", "missing.pt"], "model file missing.pt does not exist"),
    ("none", ["evaluate", "models:/unet-opt-default@champion"], "no MLflow store"),
    searched("search", ["evaluate", "models:/nope@champion"], "model 'models:/nope@champion' not found"),
    searched("search", ["evaluate", "not-a-checkpoint.txt"], "is not a unet-opt checkpoint"),
    searched("search", ["predict", "models:/unet-opt-default@champion", "broken.jpg"], "broken.jpg cannot be read"),
    searched("search", ["predict", "models:/unet-opt-default@champion", "absent.jpg"], "absent.jpg does not exist"),
    searched("search", ["retrain", "--best", "--device", "cpu", "--procs", "5"],
             "cannot be split evenly over 5 processes; use a process or GPU count that divides it"),
])
def test_bad_input_to_model_commands(home, cli, request, setup, args, message):
    if setup == "search":
        request.getfixturevalue("searched_home")
    if setup == "failed":  # every trial fails: the search stops after 5 in a row
        run_search(home, 1, fit=partial(fits.always_fail, RuntimeError("boom")))
    (home / "broken.jpg").write_text("not an image")
    (home / "not-a-checkpoint.txt").write_text("hello")
    before = written_files(home)
    code, _, err = cli(*args)
    assert code == 2 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    # nothing registered, nothing written
    assert written_files(home) == before


@pytest.mark.slow
def test_train_logs_one_baseline_run_that_evaluate_takes_by_run_id(home, cli):
    code, out, err = cli("train", "--set", "train.epochs=2", "--set", "data.image_size=32",
                         "--set", "data.synthetic_images=24", "--set", "model.base_channels=8")
    assert code == 0, err
    client = MlflowClient(f"sqlite:///{home}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("unet-opt-default-baseline")  # never the study's experiment
    (run,) = client.search_runs([exp.experiment_id])
    # one run, tagged as a baseline, with the fixed params, per-epoch metrics and the trial artifacts
    assert run.data.tags["unet_opt.role"] == "train" and run.data.params["train.epochs"] == "2"
    assert f"see it:     `unet-opt ui`, then open http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs/" \
           f"{run.info.run_id}?workflowType=machine_learning" in out
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_dice")] == [1, 2]
    assert {"config.toml", "learning_curves.png", "confusion_matrix.png", "predictions.png", "per_class.csv",
            "test_confusion_matrix.png", "checkpoint"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    code, out, _ = cli("evaluate", run.info.run_id)
    shown = float(next(line.split()[1] for line in out.splitlines() if line.startswith("test_dice ")))
    assert code == 0 and round(shown, 4) == round(run.data.metrics["test_dice"], 4)


@pytest.mark.slow
def test_a_killed_retrain_s_run_ends_failed_when_the_next_command_opens_the_experiment(searched_home, cli):
    # a retrain whose process is SIGKILLed after its first epoch leaves its run RUNNING...
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parents[1])!r})\n"
              "import fits\nfrom pathlib import Path\nfrom unet_opt.parallel.placement import plan\n"
              "from unet_opt.config.paths import Paths\nfrom unet_opt.study.retrain import retrain_best\n"
              "paths = Paths.resolve('.')\n"
              "retrain_best(paths, paths.storage_url(), paths.tracking_uri(), None, plan('cpu', None, None), "
              "epochs=3, fit=fits.die_after_first_epoch)\n")
    killed = subprocess.run([sys.executable, "-c", script], cwd=searched_home, capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -9, killed.stderr
    _, runs = retrain_runs(searched_home)
    assert [r.info.status for r in runs] == ["RUNNING"]
    # ...which the next retrain, finding its process gone, ends FAILED
    assert cli("retrain", "--best", "--name", "again")[0] == 0
    _, runs = retrain_runs(searched_home)
    assert [r.info.status for r in runs] == ["FAILED", "FINISHED"]
    assert runs[0].data.tags["unet_opt.end_reason"] == "its process died (killed or crashed)"


@pytest.mark.slow
def test_the_best_config_file_trains_again_to_the_trial_s_value(searched_home, cli):
    import tomllib

    import optuna

    code, out, err = cli("report", "--best-config", "best.toml")
    assert code == 0 and "wrote best.toml: trial #0" in out, err
    best = optuna.load_study(study_name="default", storage=f"sqlite:///{searched_home}/studies/unet-opt.db").best_trial
    written = tomllib.loads((searched_home / "best.toml").read_text())
    assert written["train"]["lr"] == best.params["train.lr"] and written["train"]["seed"] == best.number
    code, out, err = cli("train", "--space", "best.toml")
    assert code == 0, err
    val = {line.split()[0]: float(line.split()[1]) for line in out.splitlines() if line.startswith("val_")}
    assert val["val_dice"] == pytest.approx(best.value, abs=5e-5)  # the trial, trained again (shown to 4 places)
    code, _, err = cli("report", "--best-config", "best.toml")
    assert code == 2 and "best.toml exists; pass --overwrite" in err
    assert cli("report", "--best-config", "best.toml", "--overwrite")[0] == 0
    for store in ("studies/unet-opt.db", "mlruns/mlflow.db"):  # found by a review: --overwrite replaced them
        before = (searched_home / store).read_bytes()
        code, _, err = cli("report", "--best-config", store, "--overwrite")
        assert code == 2 and "is a database" in err and len(err.splitlines()) == 1, err
        assert (searched_home / store).read_bytes() == before
    checkpoint = searched_home / "model.pt"  # found by a review: --overwrite replaced a checkpoint
    torch.save({"weights": torch.zeros(3)}, checkpoint)
    before = checkpoint.read_bytes()
    code, _, err = cli("report", "--best-config", "model.pt", "--overwrite")
    assert code == 2 and "model.pt is not a text file (a checkpoint? a picture?), which --overwrite never " \
                         "replaces" in err and checkpoint.read_bytes() == before, err
    os.mkfifo(searched_home / "pipe")  # found by a review: reading its first bytes waited for ever
    code, _, err = cli("report", "--best-config", "pipe", "--overwrite")
    assert code == 2 and "pipe is not a regular file, which --overwrite never replaces" in err, err
    code, _, err = cli("report", "--best-config", "no/such/folder/best.toml")
    assert code == 2 and "folder no/such/folder does not exist" in err
    for path, message in (("best.toml/x.toml", "best.toml is a file, not a folder"), ("", "needs a file name"),
                          ("/proc/best.toml", "cannot write /proc/best.toml")):  # found by a review, as tracebacks
        code, _, err = cli("report", "--best-config", path)
        assert code == 2 and err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err
    code, out, _ = cli("report", "--best-config", "-")  # the TOML alone on stdout, no file named "-"
    assert code == 0 and out.startswith("# best trial #0") and tomllib.loads(out) == written
    assert not (searched_home / "-").exists()
    assert cli("report", "--best-config", "-", "--json")[0] == 2  # both would write to stdout


@pytest.mark.slow
def test_champion_stays_on_a_retrain_of_the_study_that_tests_better_unless_promoted(champion, cli):
    """Found by a review: `retrain --best --epochs 1` (test_dice 0.01) moved @champion off a version that tested
    at 0.13, without a word."""
    client, (first,) = retrain_runs(champion)
    # the champion tests better than the same retrain will: its latest test_dice is what MLflow shows
    client.log_metric(first.info.run_id, "test_dice", 0.999, step=10**6)
    code, out, err = cli("retrain", "--best")
    assert code == 0, err
    assert "registered model: models:/unet-opt-default/2; @champion stays on version 1, the retrain of trial " \
           f"#{first.data.tags['source_trial']}, which tests better on the same images (test_dice 0.9990 against " in out
    assert ". To move it, set it on version 2 in the MLflow UI's model registry, or retrain with --promote" in out
    assert client.get_model_version_by_alias("unet-opt-default", "champion").version == 1
    # the study remembers its last retrain: `report` and the study's run in MLflow say where it went
    trial = first.data.tags["source_trial"]
    _, runs = retrain_runs(champion)
    said = f"trial #{trial} -> `models:/unet-opt-default/2` (test_dice {runs[1].data.metrics['test_dice']:.4f}), " \
           f"`@champion` was left on version 1, which tested better"
    assert f"last retrain: {said.replace('`', '')}\n" in cli("report")[1]
    parent = optuna.load_study(study_name="default", storage=f"sqlite:///{champion}/studies/unet-opt.db")
    note = client.get_run(parent.user_attrs["mlflow_parent_run_id"]).data.tags["mlflow.note.content"]
    assert f"Last retrain: {said}." in note and "(of 2 finished trials asked for)" in note
    code, out, _ = cli("retrain", "--best", "--promote")
    assert code == 0 and "registered model: models:/unet-opt-default@champion (version 3; it was version 1, the " \
                          f"retrain of trial #{trial}, which tests better on the same images (test_dice 0.9990 against " \
                          f"{runs[1].data.metrics['test_dice']:.4f}), and --promote moved it)" in out
    version = client.get_model_version_by_alias("unet-opt-default", "champion")
    _, runs = retrain_runs(champion)
    assert version.version == 3 and version.run_id == runs[2].info.run_id
    # what the registry's pages show of a version, without opening its run
    assert version.tags == {"study": "default", "source_trial": trial, "epochs": runs[2].data.params["train.epochs"],
                            "test_dice": str(runs[2].data.metrics["test_dice"])}
    assert "@champion was moved to it\n" in cli("report")[1]
    # a later search found a better trial than the one retrained last: report names it and how to retrain it
    parent.set_user_attr("last_retrain", {**parent.user_attrs["last_retrain"], "trial": 0 if trial == "1" else 1})
    assert f"@champion was moved to it; the best trial is #{trial} now: `unet-opt retrain --best --study default`\n" \
           in cli("report")[1]
    # a champion whose run was deleted in the UI holds the alias against nothing (a review)
    client.log_metric(runs[2].info.run_id, "test_dice", 0.999, step=10**6)
    client.delete_run(runs[2].info.run_id)
    code, out, _ = cli("retrain", "--best")
    assert code == 0 and "(version 4; it was version 3, test_dice 0.9990, whose run is deleted)" in out
    # another study's retrain under the same name: its test images may differ, so the alias moves, and says whose
    assert cli("search", "--study", "other", "--trials", "1", *FAST)[0] == 0
    code, out, _ = cli("retrain", "--best", "--study", "other", "--name", "unet-opt-default")
    assert code == 0 and "(version 5; it was version 4 of study 'default', test_dice " in out


def retrain_with(home: Path, patch: str) -> subprocess.CompletedProcess:
    """`unet-opt retrain --best` in a process of its own, after `patch` (Python) ran in it."""
    script = f"import os, signal\nimport mlflow\nfrom unet_opt.cli.app import main\n{patch}\nmain(['retrain', '--best'])\n"
    return subprocess.run([sys.executable, "-c", script], cwd=home, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_stop_as_the_study_records_its_retrain_is_held_until_it_has(champion, cli):
    """Found by a review: Ctrl-C just after registering left the study's `last_retrain` (and the note) on the
    version before."""
    stopped = retrain_with(champion, "import optuna\nreal = optuna.Study.set_user_attr\n"
                                     "def record(self, key, value):\n"
                                     "    if key == 'last_retrain':\n        os.kill(os.getpid(), signal.SIGINT)\n"
                                     "    return real(self, key, value)\noptuna.Study.set_user_attr = record")
    assert stopped.returncode == 130 and "recording the retrain in its study; press Ctrl-C again" in stopped.stderr
    assert "registered model: models:/unet-opt-default@champion (version 2; " in stopped.stdout, stopped.stderr
    assert "last retrain: trial #" in (report := cli("report")[1]) and "models:/unet-opt-default/2 " in report


@pytest.mark.slow
def test_a_retrain_stopped_or_killed_as_it_registers_leaves_the_run_and_the_registry_in_step(champion, cli):
    """Found by a review: `log_model` ended the run FINISHED before the model was registered, so a retrain
    killed then left a FINISHED run with no model version that no later command noticed; one stopped after
    registering left @champion on the model of a KILLED run."""
    client, _ = retrain_runs(champion)
    # killed as it registers: its run stays RUNNING (not FINISHED), which the next command ends FAILED
    killed = retrain_with(champion, "mlflow.register_model = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)")
    assert killed.returncode == -9, killed.stderr
    _, runs = retrain_runs(champion)
    assert [r.info.status for r in runs] == ["FINISHED", "RUNNING"]
    assert client.get_model_version_by_alias("unet-opt-default", "champion").version == 1
    # Ctrl-C as it registers: held until the model is registered, the run FINISHED and said, then "interrupted"
    stopped = retrain_with(champion, "real = mlflow.register_model\n"
                                     "def register(*a, **k):\n    os.kill(os.getpid(), signal.SIGINT)\n"
                                     "    return real(*a, **k)\nmlflow.register_model = register")
    assert stopped.returncode == 130, stopped.stderr
    assert "registering the model (a few seconds); press Ctrl-C again to stop now" in stopped.stderr
    assert "registered model: models:/unet-opt-default@champion (version 2; it was version 1, test_dice " \
           in stopped.stdout and stopped.stderr.rstrip().endswith("interrupted")
    _, runs = retrain_runs(champion)
    assert [r.info.status for r in runs] == ["FINISHED", "FAILED", "FINISHED"]
    assert runs[2].data.tags["registered_model"] == "unet-opt-default/2"
    assert client.get_model_version_by_alias("unet-opt-default", "champion").run_id == runs[2].info.run_id
    # killed after its run ended with the model registered, as @champion was about to move: left where it was
    done = retrain_with(champion, "mlflow.MlflowClient.set_registered_model_alias = "
                                  "lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)")
    assert done.returncode == -9, done.stderr
    _, runs = retrain_runs(champion)
    assert runs[3].info.status == "FINISHED" and runs[3].data.tags["registered_model"] == "unet-opt-default/3"
    assert client.get_model_version_by_alias("unet-opt-default", "champion").version == 2
    # the champion's run deleted and purged since (`mlflow gc`): said, not a traceback (a review)
    client.delete_run(runs[2].info.run_id)
    store = f"sqlite:///{champion}/mlruns/mlflow.db"
    purged = subprocess.run([sys.executable, "-m", "mlflow", "gc", "--backend-store-uri", store, "--tracking-uri",
                             store], capture_output=True, text=True, timeout=120)
    assert purged.returncode == 0, purged.stderr
    code, out, err = cli("retrain", "--best")
    assert code == 0 and "(version 4; it was version 2, whose run is gone)" in out, err
    code, _, err = cli("evaluate", "models:/unet-opt-default/2")  # said so, not "run ... has no checkpoint" (a review)
    assert code == 2 and err.startswith(f"error: models:/unet-opt-default/2 is version 2 of unet-opt-default, whose run "
                                        f"{runs[2].info.run_id} is gone (deleted and purged) with its files"), err
    # stopped as its run is being made (before its training could end it): KILLED, not left RUNNING
    made = retrain_with(champion, "from unet_opt.tracking.tracker import Tracker\nreal = Tracker.start_run\n"
                                  "def start(*a, **k):\n    real(*a, **k)\n    raise KeyboardInterrupt\n"
                                  "Tracker.start_run = start")
    assert made.returncode == 130, made.stderr
    _, runs = retrain_runs(champion)
    assert [r.info.status for r in runs] == ["FINISHED", "FAILED", "FINISHED", "FINISHED", "KILLED"]


def test_a_retrain_whose_test_fails_keeps_its_checkpoint_and_says_so(searched_home, cli, monkeypatch, capsys):
    # the test is scored in the launching process on one device (a multi-GPU retrain's rank 0 still holds its
    # share there): running out of memory in it used to lose the whole retrain, checkpoint and all
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr("unet_opt.runs.runner.split_metrics", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        cli("retrain", "--best", "--epochs", "1")
    [kept] = (searched_home / "studies" / "checkpoints").glob("*.pt")
    assert f"the trained model is kept in {kept}, though its run did not finish" in capsys.readouterr().err
