"""Configuration: space files, `--set`, precedence, validation, TOML round trips, paths and password redaction."""

import logging
from pathlib import Path

import pytest

from unet_opt import runtime
from unet_opt.config.paths import create_atomically, redact_url, sqlite_file
from unet_opt.config.schema import Config, to_toml
from unet_opt.config.space_file import find_space, load_config, parse_set, stored_config
from unet_opt.errors import UserError


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "space.toml"
    path.write_text(text)
    return str(path)


def test_builtin_spaces_load_and_validate():
    for name in ("default", "drone", "drone-cpu", "binary"):
        cfg = load_config(name)
        # each built-in file searches the four hyperparameters of the original study
        assert {"train.lr", "train.batch_size", "data.image_size", "train.epochs"} <= set(cfg.space)
    drone = load_config("drone")  # the GPU space: pretrained encoders, the loss and the schedule too
    assert {"model.encoder", "train.loss", "train.schedule"} <= set(drone.space)
    assert min(drone.space["data.image_size"].choices) == 256 and drone.model.pretrained == "imagenet"
    assert load_config("binary").data.foreground == ["roof"]
    # the drone spaces name Kaggle's folder: without it, a search is refused rather than run on the synthetic data
    assert drone.data.dataset == load_config("drone-cpu").data.dataset == "semantic_drone_dataset"


def test_builtin_space_is_found_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # a bare name resolves to the project's search/ folder
    assert find_space("default").name == "default.toml"


def test_every_builtin_space_is_installed_with_the_package():
    # a wheel or a non-editable install finds the built-ins only where setup.cfg installs them
    import configparser

    root = Path(__file__).parents[2]
    setup = configparser.ConfigParser()
    setup.read(root / "setup.cfg")
    installed = {Path(f.strip()).name for f in setup["options.data_files"]["share/unet-opt/search"].split(",")}
    assert installed == {path.name for path in (root / "search").glob("*.toml")}


def test_precedence_flags_over_set_over_file_over_defaults(tmp_path):
    path = write(tmp_path, "[train]\npatience = 7\nlr = 0.5\n[search]\ntrials = 11\n")
    cfg = load_config(path, {"search.trials": 3}, ["train.lr=0.25"])
    assert cfg.train.patience == 7  # from the file
    assert cfg.search.trials == 3  # the flag beats the file
    assert cfg.train.lr == 0.25  # --set beats the file
    assert cfg.train.epochs == Config().train.epochs  # untouched: the dataclass default


def test_set_fixes_a_searched_field_and_can_edit_the_space():
    cfg = load_config("default", sets=["train.epochs=3", "space.lr.high=0.05", "space.image_size.choices=[32, 64]"])
    assert cfg.train.epochs == 3 and "train.epochs" not in cfg.space  # fixed, no longer searched
    assert cfg.space["train.lr"].high == 0.05
    assert cfg.space["data.image_size"].choices == (32, 64)


def test_set_values_are_read_as_toml():
    assert parse_set("data.foreground=[\"car\", \"person\"]") == ("data.foreground", ["car", "person"])
    assert parse_set("data.dataset=/some/folder") == ("data.dataset", "/some/folder")  # not TOML: a string
    assert parse_set("train.amp=false") == ("train.amp", False)


@pytest.mark.parametrize("text, sets, message", [
    ("[train]\nlr = 'fast'\n", [], r"train.lr = 'fast' should be float"),
    ("[train]\nbatch_size = 6\n", [], r"multiples of 4"),
    ("[trian]\nlr = 0.1\n", [], r"unknown section \[trian\]"),
    ("[train]\nlearning_rate = 0.1\n", [], r"unknown key 'train.learning_rate'"),
    ("[train\nlr = 0.1\n", [], r"not valid TOML"),
    ("[space.batch_size]\ntype = 'int'\nlow = 4\nhigh = 16\nstep = 2\n", [], r"multiples of 4.*step = 4"),
    ("[space.batch_size]\ntype = 'categorical'\nchoices = [4, 6]\n", [], r"multiples of 4 \(got 6\)"),
    ("[space.image_size]\ntype = 'categorical'\nchoices = [32, 36]\n", [],
     r"multiples of 2\*\*depth = 8 \(got 36\); use a multiple of 8, e.g. 32"),
    ("[space.lr]\ntype = 'float'\nlow = 0.1\nhigh = 0.01\n", [], r"low = 0.1 is above high"),
    ("[space.lr]\ntype = 'float'\nlow = 0\nhigh = 0.01\nlog = true\n", [], r"log = true needs low > 0"),
    ("[space.lr]\ntype = 'gaussian'\n", [], r"type = 'gaussian'"),
    ("[space.dropout]\ntype = 'float'\nlow = 0\nhigh = 1\n", [], r"unknown key 'dropout'"),
    ("[space.lr]\ntype = 'float'\nlow = 1e-4\nhigh = 1e-1\nstpe = 2\n", [], r"unknown key 'stpe'"),
    ("# the --set alone\n", ["search.sampler=grid"], r"search.sampler = 'grid' is not one of 'tpe', 'random'"),
    ("# the --set alone\n", ["train.nope=1"], r"unknown key 'train.nope'"),
    ("# the --set alone\n", ["trainlr"], r"not of the form section.key=value"),
    ("# the --set alone\n", ["space.lr.high=0.5"], r"'lr' is not searched"),
    ("# the --set alone\n", ["data.test_fraction=0.7"], r"data.test_fraction = 0.7 must be between 0 and 0.5"),
    ("# the --set alone\n", ["search.study=my study"], r"may hold only letters"),
    ("# the --set alone\n", ["data.binary='mean'", "data.foreground=['car']"], r"set only one"),
])
def test_errors_name_the_key_the_file_and_the_fix(tmp_path, text, sets, message):
    path = write(tmp_path, text)
    with pytest.raises(UserError, match=message) as info:
        load_config(path, sets=sets)
    # file errors name the file, --set errors name the --set
    assert path in str(info.value) or "--set" in str(info.value)


def test_missing_space_file():
    with pytest.raises(UserError, match=r"space file 'nope.toml' not found"):
        load_config("nope.toml")


def test_resolved_config_round_trips_through_toml(tmp_path):
    cfg = load_config("default", sets=["data.foreground=['car']", "train.lr=0.003"])
    path = tmp_path / "resolved.toml"
    path.write_text(to_toml(cfg))
    again = load_config(str(path))
    # every field and the space survive the trip
    assert again.flat() == cfg.flat() and again.space == cfg.space


def test_sqlite_file_is_the_database_of_a_sqlite_url_only():
    assert sqlite_file("sqlite:////home/me/studies/unet-opt.db") == Path("/home/me/studies/unet-opt.db")
    assert sqlite_file("sqlite:///mlruns/mlflow.db") == Path("mlruns/mlflow.db")
    assert sqlite_file("postgresql://me@db/optuna") is None and sqlite_file("http://tracker:5000") is None


@pytest.mark.parametrize("text, shown", [
    ("postgresql://me:s3cret@db:5432/optuna", "postgresql://me:***@db:5432/optuna"),
    ("sqlite:///studies/unet-opt.db", "sqlite:///studies/unet-opt.db"),
    ("http://u:pa#ss/w?rd@host:5000", "http://u:***@host:5000"),  # '#', '/' and '?' in the password
    ("postgresql://me@db/optuna?password=s3cret&sslmode=require", "postgresql://me@db/optuna?password=***&sslmode=require"),
    ("https://host/api?token=abc123", "https://host/api?token=***"),
    ("postgresql://bob:S3c@r3t@127.0.0.1:9/x", "postgresql://bob:***@127.0.0.1:9/x"),  # an '@' in the password
    ("postgresql://bob@db/x?sslmode=require&sslpassword=Zq9", "postgresql://bob@db/x?sslmode=require&sslpassword=***"),
    ("(psycopg.OperationalError) connection to postgresql://me:s3cret@10.0.0.1/x failed: timeout",
     "(psycopg.OperationalError) connection to postgresql://me:***@10.0.0.1/x failed: timeout"),
    # libpq's keyword form, a URL-encoded option, a repr, quoted passwords with a space
    ("host=db port=5432 password=s3cret dbname=x", "host=db port=5432 password=*** dbname=x"),
    ("postgresql://me@db/x?options=-c%20password%3Ds3cret&sslmode=require",
     "postgresql://me@db/x?options=-c%20password%3D***&sslmode=require"),
    ("postgresql://me@db/x?options=-c%20password%3Ds3cret%20-c%20search_path%3Dy",
     "postgresql://me@db/x?options=-c%20password%3D***%20-c%20search_path%3Dy"),
    ("Connection(host='db', password='s3cret', port=5432)", "Connection(host='db', password=***, port=5432)"),
    ("host=db password='s3 cret' dbname=x", "host=db password=*** dbname=x"),
    ('{"password" : "s3cret", "user": "me"} password = "s3 cret"', '{"password" : ***, "user": "me"} password = ***'),
])
def test_redact_url_hides_passwords_in_urls_and_in_any_text(text, shown):
    assert redact_url(text) == shown


def test_logged_params_never_hold_a_password():
    cfg = load_config("default", {"search.storage": "postgresql://optuna:s3cret@db:5432/optuna",
                                  "search.tracking_uri": "http://me:hunter2@mlflow:5000"})
    params = cfg.params()
    # every field is there, the URLs are, their passwords are not
    assert set(params) == set(cfg.flat())
    assert params["search.storage"] == "postgresql://optuna:***@db:5432/optuna"
    assert "s3cret" not in str(params) and "hunter2" not in str(params)
    assert "s3cret" not in to_toml(cfg, redact_url)  # nor in the config.toml artifact


def test_a_store_file_is_created_whole_or_not_at_all(tmp_path):
    # a killed process's partial files (and SQLite's journal beside them) are cleared first
    (tmp_path / "x.db.partial-999999").write_text("half")
    (tmp_path / "x.db.partial-999999-journal").write_text("half")
    create_atomically(tmp_path / "x.db", lambda path: path.write_text("whole"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.db"] and (tmp_path / "x.db").read_text() == "whole"
    # a store already there is never replaced
    create_atomically(tmp_path / "x.db", lambda path: path.write_text("other"))
    assert (tmp_path / "x.db").read_text() == "whole"

    def interrupted(path):
        path.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # a build that is stopped leaves nothing under either name
        create_atomically(tmp_path / "y.db", interrupted)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.db"]


def test_log_lines_and_tracebacks_never_show_a_password(capsys):
    runtime.setup(verbose=True)  # the handler writes to this test's stderr
    log = logging.getLogger("unet_opt.test")
    try:
        raise ConnectionError("cannot reach postgresql://me:s3cret@db/optuna")
    except ConnectionError:
        log.debug("trial failed at %s", "http://me:s3cret@host:5000", exc_info=True)
    err = capsys.readouterr().err
    assert "s3cret" not in err and "http://me:***@host:5000" in err and "postgresql://me:***@db" in err


def test_the_evaluation_frame_is_the_largest_size_the_space_draws_unless_set():
    cfg = load_config("default")  # image sizes 32, 48, 64
    assert cfg.data.eval_size == 0 and cfg.with_eval_size().data.eval_size == 64
    assert load_config("default", sets=["data.image_size=32"]).with_eval_size().data.eval_size == 32  # not searched
    assert load_config("default", sets=["data.eval_size=48"]).with_eval_size().data.eval_size == 48
    # a config stored before the field existed (a checkpoint, a study) scores at its own frame, as it was judged
    old = "[data]\nimage_size = 32\n[model]\nbase_channels = 8\n"
    assert stored_config(old, "old checkpoint").data.eval_size == -1
    assert stored_config("[data]\neval_size = 64\n", "a new checkpoint").data.eval_size == 64
