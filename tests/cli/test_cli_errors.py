"""Bad input to any command: one `error:` line, exit code 2, no traceback, nothing written."""

import multiprocessing
import os
import urllib.error

import pytest
import torch
from conftest import FAST, written_files

BAD_STEP = "[space.batch_size]\ntype = 'int'\nlow = 4\nhigh = 16\nstep = 2\n"


TWICE = "[space.lr]\ntype = 'float'\nlow = 0.001\nhigh = 0.01\n[space.\"train.lr\"]\ntype = 'float'\nlow = 0.001\n" \
        "high = 0.1\n"


BAD_HIGH = "[space.batch_size]\ntype = 'int'\nlow = 4\nhigh = 14\nstep = 4\n"


FLOAT_SIZE = "[space.image_size]\ntype = 'float'\nlow = 32.0\nhigh = 64.0\n"


SEARCHED_CLASSES = "[space.\"data.num_classes\"]\ntype = 'int'\nlow = 2\nhigh = 24\n"


SEARCHED_DATA = "[space.\"data.dataset\"]\ntype = 'categorical'\nchoices = ['synthetic', 'd']\n"


WIDE_STEP = "[space.lr]\ntype = 'float'\nlow = 0.001\nhigh = 0.01\nstep = 0.5\n"


def offline(*args, **kwargs):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


@pytest.mark.parametrize("args, files, message", [
    (["search", "--trials", "0"], {}, "Invalid value for '--trials'"),
    (["search", "--trials", "many"], {}, "'many' is not a valid integer."),  # not "integer range" (a review)
    (["search", "--timeout", "-5"], {}, "Invalid value for '--timeout'"),
    (["search", "--space", "missing.toml"], {}, "space file 'missing.toml' not found"),
    (["search", "--space", "bad.toml"], {"bad.toml": "[train\nlr = 1"}, "not valid TOML"),
    (["search", "--space", "bad.toml"], {"bad.toml": BAD_STEP}, "multiples of 4"),
    (["search", "--space", "bad.toml"], {"bad.toml": TWICE}, "[space.lr] and [space.\"train.lr\"] both search train.lr"),
    (["search", "--data", "synthetic", "--set", "data.dataset=d"], {},
     "--set data.dataset=d and a flag of the command line set data.dataset to two values ('synthetic' and 'd')"),
    (["search", "--space", "bad.toml"], {"bad.toml": BAD_HIGH}, "train.batch_size values must be multiples of 4 (got "
                                                                "high = 14); use low, high and step that are multiples"),
    (["search", "--space", "bad.toml"], {"bad.toml": "[space.image_size]\ntype='categorical'\nchoices=[30]"},
     "multiples of 2**depth = 8 (got 30); use a multiple of 8, e.g. 32"),
    (["search", "--set", "train.nope=1"], {}, "unknown key 'train.nope'"),
    (["search", "--set", "train.lr=-1"], {}, "train.lr = -1.0 must be positive"),
    (["search", "--set", "search.brackets=0"], {}, "search.brackets = 0 is too small; use at least 1"),
    (["search", "--set", "space.lr.type=normal"], {}, "type = 'normal'"),
    (["search", "--sampler", "grid"], {}, "'grid' is not one of"),
    (["search", "--pruner", "sometimes"], {}, "'sometimes' is not one of"),
    (["search", "--study", "my study!"], {}, "may hold only letters"),
    (["search", "--set", "data.foreground=['unicorn']"], {}, "unknown class 'unicorn'"),
    (["search", "--bogus"], {}, "No such option '--bogus'"),
    (["search", "--gpus", "two"], {}, "--gpus 'two': give 'all' or a number of GPUs from 1 up"),
    (["search", "--gpus", "0"], {}, "--gpus '0': give 'all' or a number of GPUs from 1 up"),
    (["search", "--device", "cpu", "--gpus", "2"], {}, "--gpus 2 needs CUDA GPUs"),
    (["search", "--device", "cpu", "--procs", "3"], {}, "train.batch_size = 4 cannot be split evenly over 3"),
    (["search", "--workers", "0"], {}, "Invalid value for '--workers'"),
    (["search", "--tracking-uri", "foo://x"], {}, "cannot reach the MLflow tracking store foo://x"),
    (["serch"], {}, "No such command 'serch'"),
    (["report"], {}, "no study storage"),
    (["report", "--study", "nope"], {}, "no study storage"),
    (["studies"], {}, "no study storage"),
    (["ui"], {}, "no MLflow runs"),
    (["ui", "--port", "0"], {}, "Invalid value for '--port'"),
    (["ui", "--port", "5059", "--live-port", "5059"], {}, "--port and --live-port are both 5059"),  # a review
    (["search", "--data", "nowhere"], {}, "data folder nowhere does not exist"),
    (["search", "--data", "notes.txt"], {"notes.txt": "hi"}, "data path notes.txt is not a folder"),
    (["search", "--data", "empty"], {"empty/": ""}, "no known layout in empty"),
    (["search", "--data", "half"], {"half/original_images/": ""},  # a download half unpacked (a review)
     "half/original_images/ is there but not half/label_images_semantic/, which the kaggle layout needs"),
    (["search", "--data", "g"], {"g/images/": ""}, "g/images/ is there but not g/masks/, which the generic layout "
                                                   "needs beside it; add it or pass another folder"),
    (["search", "--data", "d"], {"d/images/": "", "d/masks/": ""}, "holds no image"),
    (["train", "--set", "train.batch_size=6"], {}, "multiples of 4"),
    (["train", "--space", "nope"], {}, "space file 'nope' not found"),
    (["search", "--space", "small"], {"small.toml": "[train]\nepochs = 2\n"},
     "space file 'small' not found; to use small.toml, pass --space small.toml"),
    (["report", "--home", ""], {}, "'--home': is empty"),
    (["search", "--space", "drone-cpu"], {}, "the data folder semantic_drone_dataset (data.dataset in "),
    (["train", "--space", "drone"], {}, "does not exist from here"),
    (["search", "--space", "drone", "--data", "nope"], {}, "data folder nope does not exist (from "),
    (["retrain"], {}, "Missing option '--best'"),
    (["retrain", "--best", "--epochs", "0"], {}, "Invalid value for '--epochs'"),
    (["retrain", "--best"], {}, "no study storage"),
    (["evaluate", "missing.pt"], {}, "model file missing.pt does not exist"),
    (["evaluate", "models:/x@champion"], {}, "mlruns/mlflow.db to find 'models:/x@champion' in"),
    (["evaluate", "models:/x@champion", "--split", "holdout"], {}, "'holdout' is not one of"),
    (["predict", "models:/x@champion", "photo.jpg"], {}, "image photo.jpg does not exist"),
    (["predict", "models:/x@champion"], {}, "Missing argument 'IMAGES...'"),
    (["data", "check", "nowhere"], {}, "data folder nowhere does not exist"),
    (["data", "prepare", "nowhere", "--image-size", "32"], {}, "data folder nowhere does not exist"),
    # non-finite numbers, negative or huge seeds, absurd sizes
    (["search", "--set", "train.lr=nan"], {}, "train.lr = nan must be a finite number"),
    (["search", "--set", "train.weight_decay=inf"], {}, "train.weight_decay = inf must be a finite number"),
    (["search", "--timeout", "nan"], {}, "'--timeout': nan is not a number of seconds; e.g. --timeout 3600"),
    (["search", "--timeout", "inf"], {}, "'--timeout': inf is not a number of seconds; e.g. --timeout 3600"),
    (["search", "--timeout", "ten"], {}, "'--timeout': 'ten' is not a valid number of seconds"),
    (["report", "--overwrite"], {}, "--overwrite replaces the file of --best-config; add --best-config FILE"),
    (["search", "--seed", "-1"], {}, "search.seed = -1 must be zero or more"),
    (["search", "--seed", "99999999999"], {}, "search.seed = 99999999999 is too large"),
    (["search", "--set", "data.split_seed=-1"], {}, "data.split_seed = -1 must be zero or more"),
    (["search", "--set", "train.seed=1e23"], {}, "train.seed = 1e+23 should be int"),
    (["search", "--set", "data.image_size=1048576"], {}, "data.image_size = 1048576 is too large; use at most 4096"),
    (["search", "--set", "data.synthetic_images=99999999999"], {}, "data.synthetic_images = 99999999999 is too large"),
    (["search", "--set", "train.epochs=1000000"], {}, "train.epochs = 1000000 is too large"),
    (["search", "--set", "model.base_channels=0"], {}, "model.base_channels = 0 is too small"),
    (["search", "--set", "model.depth=9"], {}, "model.depth = 9 is too large; use at most 6"),
    (["search", "--trials", "1000000"], {}, "search.trials = 1000000 is too large"),
    # spaces that do not fit their fields, and fields that must not be searched
    (["search", "--space", "s.toml"], {"s.toml": FLOAT_SIZE}, "data.image_size is a whole number; use type = \"int\""),
    (["search", "--space", "s.toml"], {"s.toml": SEARCHED_CLASSES}, "data.num_classes cannot be searched"),
    (["search", "--space", "s.toml"], {"s.toml": SEARCHED_DATA}, "data.dataset cannot be searched"),
    (["search", "--space", "s.toml"], {"s.toml": WIDE_STEP}, "step = 0.5 is wider than the range 0.001..0.01"),
    (["search", "--set", "data.val_fraction=0.9"], {}, "data.val_fraction = 0.9 must be between 0 and 0.5"),
    (["search", "--set", "data.test_fraction=0"], {}, "data.test_fraction = 0.0 must be between 0 and 0.5"),
    (["search", "--set", "data.synthetic_images=12", "--set", "data.val_fraction=0.49",
      "--set", "data.test_fraction=0.49"], {}, "12 images are too few to split"),
    # folders that were not asked for, unsafe names
    (["search", "--storage", "sqlite:////nonexistent/dir/x.db"], {}, "folder /nonexistent/dir does not exist"),
    (["search", "--tracking-uri", "sqlite:////nonexistent/dir/m.db"], {}, "folder /nonexistent/dir does not exist"),
    (["search", "--study", "../../x"], {}, "may hold only letters"),
    (["retrain", "--best", "--name", "../../x"], {}, "--name '../../x' may hold only letters"),
    (["retrain", "--best", "--name", "a/b"], {}, "--name 'a/b' may hold only letters"),
    (["retrain", "--best", "--name", ".."], {}, "must start with a letter or digit, hold no '..'"),  # a review
    # where a run trains
    (["retrain", "--best", "--procs", "0"], {}, "Invalid value for '--procs'"),
    (["retrain", "--best", "--device", "cpu", "--gpus", "2"], {}, "--gpus 2 needs CUDA GPUs"),
    (["train", "--device", "cpu", "--procs", "3"], {}, "cannot be split evenly over 3 processes; use a process or GPU"),
    (["train", "--gpus", "x"], {}, "--gpus 'x': give 'all' or a number of GPUs from 1 up"),
    # model commands
    (["predict", "models:/x@champion", "fifo"], {"fifo|": ""}, "image fifo is not a regular file"),
    (["predict", "models:/x@champion", "folder"], {"folder/": ""}, "image folder is not a regular file"),
    (["evaluate", "crafted.pt"], {"crafted.pt": "not a checkpoint"}, "crafted.pt is not a unet-opt checkpoint"),
    (["data", "check", "d", "--num-classes", "1"], {}, "Invalid value for '--num-classes'"),
    (["data", "prepare", "d"], {}, "Missing option '--image-size'"),
    (["studies", "--storage", "sqlite:////nonexistent/x.db"], {}, "no study storage at /nonexistent/x.db"),
    (["--home", "/nonexistent/project", "search"], {}, "folder /nonexistent does not exist; create it first or fix --home"),
    (["report", "--storage", "sqlite:///other.db"], {"other.db": ""}, "no study in the storage yet"),
    (["search", "--set", "space.lr.low=abc"], {}, "low must be a number"),
    # a project folder whose path a SQLite URL cannot hold (the database landed in the parent folder)
    (["--home", "qm?x", "search"], {"qm?x/": ""}, "has '?', '%' or '#' in its path, which a SQLite URL cannot hold"),
    (["--home", "pct%41", "report"], {"pct%41/": ""}, "has '?', '%' or '#' in its path"),
    (["--home", "h#1", "search"], {"h#1/": ""}, "has '?', '%' or '#' in its path, which a SQLite URL cannot hold"),
    # an empty --out was the current folder (found by a review)
    (["evaluate", "models:/x@champion", "--out", ""], {}, "'--out': needs a folder name"),
    (["predict", "models:/x@champion", "photo.jpg", "--out", " "], {}, "'--out': needs a folder name"),
    # empty values and files, and the mistyped input named before an output in the way (a review)
    (["search", "--study", ""], {}, "'--study': is empty; pass a value, or leave --study out"),
    (["search", "--storage", " "], {}, "'--storage' (env var: 'UNET_OPT_STORAGE'): is empty"),
    (["--home", "", "report"], {}, "'--home' (env var: 'UNET_OPT_HOME'): is empty"),
    (["report", "--study", ""], {}, "'--study': is empty"),
    (["search", "--space", "s.toml"], {"s.toml": " \n"}, "s.toml is empty; write the settings to change into it"),
    (["train", "--space", "s.toml"], {"s.toml": ""}, "s.toml is empty"),
    (["evaluate", "crafted.pt"], {"crafted.pt": "not a checkpoint"},
     "error: crafted.pt is not a unet-opt checkpoint; pass a file written by"),
])
def test_bad_input_gives_one_error_line_and_writes_nothing(home, cli, args, files, message):
    for name, text in files.items():
        if name.endswith("/"):
            (home / name).mkdir(parents=True)
        elif name.endswith("|"):
            os.mkfifo(home / name[:-1])  # reading it would block for ever
        else:
            (home / name).parent.mkdir(parents=True, exist_ok=True)
            (home / name).write_text(text)
    before = written_files(home)
    code, out, err = cli(*args)
    assert code == 2
    lines = err.strip().splitlines()
    # exactly one line, starting with error:, naming the problem
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert "Traceback" not in out + err
    # no study, no run, no cache, and no process left (a search's writer starts before its stores are checked)
    assert written_files(home) == before
    assert not multiprocessing.active_children()


@pytest.mark.parametrize("args", [("search", "--set", "train.batch_size=3"), ("report",), ("search", "--help")])
def test_a_new_home_folder_is_not_left_behind_by_a_command_that_wrote_nothing(home, cli, args):
    # `--home NEW` makes the folder first: a refused command left it, empty (found by an adversarial review)
    code, _, _ = cli("--home", str(home / "new"), *args)
    assert code == (0 if "--help" in args else 2) and not (home / "new").exists()


def test_home_after_the_command_name_does_what_it_does_before_it(home, cli, monkeypatch):
    # -v and -q work on either side of the command name, so users put --home after it too (adversarial review)
    elsewhere = home / "project"
    code, _, err = cli("studies", "--home", str(elsewhere))
    assert code == 2 and f"error: no study storage at {elsewhere / 'studies'}" in err and not elsewhere.exists()
    code, _, err = cli("--home", str(home), "studies", "--home", str(elsewhere))
    assert code == 2 and err.startswith("error: --home is given twice") and written_files(home) == []
    code, _, err = cli("data", "--home", str(elsewhere), "check", "nope")  # the group's too (a review)
    assert code == 2 and err.startswith("error: data folder nope does not exist") and not elsewhere.exists()
    # one folder written two ways is one folder; two folders at any two levels are refused (a review)
    code, _, err = cli("--home", str(home), "studies", "--home", f"{home}/")
    assert code == 2 and err.startswith(f"error: no study storage at {home / 'studies'}"), err
    code, _, err = cli("data", "--home", "a", "check", "--home", "b", "nope")
    assert code == 2 and err == "error: --home is given twice, as a and as b; pass one\n"
    # a bad UNET_OPT_HOME is named as such, and a --home after the command name stands in for it (a review)
    monkeypatch.setenv("UNET_OPT_HOME", str(home / "gone" / "x"))
    code, _, err = cli("studies")
    assert code == 2 and err == f"error: folder {home / 'gone'} does not exist; create it first or fix UNET_OPT_HOME\n"
    code, _, err = cli("studies", "--home", str(elsewhere))
    assert code == 2 and err.startswith(f"error: no study storage at {elsewhere / 'studies'}"), err
    assert written_files(home) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_refused_before_anything_is_written(home, cli):
    code, _, err = cli("search", "--device", "cuda")
    assert code == 2 and err.startswith("error: --device cuda") and written_files(home) == []


def test_unknown_study_in_an_existing_storage(home, cli):
    import optuna

    (home / "studies").mkdir()
    optuna.create_study(storage=f"sqlite:///{home}/studies/unet-opt.db", study_name="drone")
    before = written_files(home)
    code, _, err = cli("report", "--study", "nope")
    assert code == 2 and "no study named 'nope'" in err and "known: drone" in err
    assert written_files(home) == before


def test_a_tracking_uri_naming_the_study_storage_is_refused_before_either_store_is_made(home, cli):
    import sqlite3

    with sqlite3.connect(home / "other.db") as db:  # another tool's database (Optuna's, here)
        db.execute("CREATE TABLE studies (study_id INTEGER)")
    before = written_files(home)
    code, _, err = cli("search", "--tracking-uri", f"sqlite:///{home}/other.db")
    assert code == 2 and "other.db is not an MLflow store" in err
    assert written_files(home) == before  # no studies/unet-opt.db made first


@pytest.mark.parametrize("content", ["garbage", "whole model", "another network"])
def test_a_bad_weights_file_is_one_error_line_before_anything_is_written(home, cli, content):
    import torchvision

    path = home / "weights.pt"
    if content == "garbage":
        path.write_bytes(b"not a checkpoint")
    else:
        torch.save(torchvision.models.resnet18() if content == "whole model" else
                   torchvision.models.mobilenet_v3_large().state_dict(), path)
    code, _, err = cli("search", "--trials", "1", *FAST, "--set", 'model.encoder="resnet18"',
                       "--set", f'model.pretrained="{path}"')
    assert code == 2 and len(err.strip().splitlines()) == 1 and "model.pretrained: " in err, err
    assert written_files(home) == ["weights.pt"]


def test_imagenet_weights_offline_are_one_error_line_and_nothing_written(home, cli, monkeypatch):
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    code, out, err = cli("search", "--trials", "1", *FAST, "--set", 'model.encoder="resnet18"',
                         "--set", 'model.pretrained="imagenet"')
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: model.pretrained = \"imagenet\": cannot download https://download.pytorch.org/")
    assert "model.pretrained=PATH" in err and written_files(home) == []


@pytest.mark.parametrize("sets,message", [
    (['model.pretrained="imagenet"'], "model.pretrained needs a model.encoder"),
    (['model.encoder="resnet18"', 'model.pretrained="absent.pt"'], "model.pretrained: no file absent.pt"),
    (['train.loss="lovasz"'], "train.loss"),
    (["train.momentum=1.5"], "train.momentum = 1.5 is too large"),
    (["train.grad_clip=-1"], "train.grad_clip = -1"),
    (["train.warmup_epochs=5"], "train.warmup_epochs must be fewer than train.epochs"),
])
def test_bad_recipe_settings_are_one_error_line(home, cli, sets, message):
    code, _, err = cli("search", "--trials", "1", *FAST, *(arg for s in sets for arg in ("--set", s)))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert written_files(home) == []


def test_the_pretrained_weights_cannot_be_searched(home, cli):
    (home / "s.toml").write_text('[space."model.pretrained"]\ntype = "categorical"\nchoices = ["imagenet", "x.pt"]\n')
    code, _, err = cli("search", "--space", "s.toml", *FAST)
    assert code == 2 and "model.pretrained cannot be searched" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("error, fix", [
    (PermissionError(13, "Permission denied"), "fix its permissions, or work in a folder you can write to (--home FOLDER)"),
    (OSError(30, "Read-only file system"), "; work in a folder you can write to (--home FOLDER)"),
    (OSError(28, "No space left on device"), "free some space on that disk, or work on another (--home FOLDER)"),
])
def test_a_folder_the_machine_refuses_is_one_error_line(home, cli, monkeypatch, error, fix):
    from pathlib import Path

    def refused(self, *args, **kwargs):
        error.filename = str(self)
        raise error

    monkeypatch.setattr(Path, "mkdir", refused)  # a project folder the user cannot write to (or a full disk)
    code, out, err = cli("search", "--trials", "1", *FAST)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"error: {error.strerror} ({home}/") and err.rstrip().endswith(fix)
