"""A real search in a temporary folder: the Optuna study and the MLflow runs, field by field."""

import contextlib
import io
import json
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import fits
import optuna
import pytest
from conftest import FAST, run_search
from mlflow.tracking import MlflowClient

from unet_opt.cli.app import main
from unet_opt.config.schema import Config
from unet_opt.study.storage import study_setup
from unet_opt.study.summary import write_study_plots

TRIAL_ARTIFACTS = {"config.toml", "learning_curves.png", "confusion_matrix.png", "confusion_matrix.csv",
                   "per_class.csv", "predictions.png"}
PRUNED_ARTIFACTS = {"config.toml", "confusion_matrix.csv", "per_class.csv", "figures.npz"}  # figures on demand


def mlflow_runs(home):
    client = MlflowClient(f"sqlite:///{home}/mlruns/mlflow.db")
    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    runs = client.search_runs([e.experiment_id for e in experiments], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("unet_opt.role") == "study"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, experiments, parents, children


def load(home) -> optuna.Study:
    return optuna.load_study(study_name="default", storage=f"sqlite:///{home}/studies/unet-opt.db")


def assert_no_param_set_repeats(study: optuna.Study) -> None:
    sets = [tuple(sorted(t.params.items())) for t in study.trials if t.params]
    assert len(set(sets)) == len(sets), sets


@pytest.fixture(scope="module")
def three_trials(tmp_path_factory) -> tuple[Path, str]:
    """`unet-opt search --trials 3 --seed 1` on tiny trials in a new folder, run once for the tests below:
    (the folder, what the command printed). Tests that change the study work on a copy."""
    folder = tmp_path_factory.mktemp("three")
    with pytest.MonkeyPatch.context() as patch:
        for var in ("MLFLOW_TRACKING_URI", "UNET_OPT_HOME", "UNET_OPT_STORAGE"):
            patch.delenv(var, raising=False)
        patch.chdir(folder)
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
            main(["search", "--trials", "3", "--seed", "1", *FAST])
    assert done.value.code == 0, out.getvalue()
    return folder, out.getvalue()


@pytest.mark.slow
def test_a_search_s_trials_are_recorded_in_optuna(three_trials):
    home, _ = three_trials
    study = load(home)
    trials = study.trials
    # exactly 3 finished trials, numbered 0..2, each linked to its MLflow run
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)
    assert all(t.params["train.batch_size"] % 4 == 0 for t in trials)
    split = study_setup(study._storage, "default")["split"]
    assert not set(split["train"]) & set(split["val"]) and not set(split["val"]) & set(split["test"])
    # the split and config stay out of what Optuna's own tools print
    assert set(study.user_attrs) == {"mlflow_parent_run_id"}
    listing = subprocess.run([Path(sys.executable).with_name("optuna"), "studies", "--storage",
                              f"sqlite:///{home}/studies/unet-opt.db"], capture_output=True, text=True, check=True)
    assert "default" in listing.stdout and split["val"][0] not in listing.stdout
    assert study.metric_names == ["val_dice"]


@pytest.mark.slow
def test_each_trial_has_one_mlflow_run_with_its_params_metrics_and_files(three_trials):
    home, _ = three_trials
    client, experiments, parents, children = mlflow_runs(home)
    # one experiment named after the study, one parent run, one child per trial under it
    assert [e.name for e in experiments] == ["unet-opt-default"]
    assert len(parents) == 1 and len(children) == 3
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    by_number = {int(c.data.tags["optuna.trial"]): c for c in children}
    for t in load(home).trials:
        run = by_number[t.number]
        assert run.info.run_id == t.user_attrs["mlflow_run_id"]
        # pruned trials are told apart by name, failed ones by status too
        suffix = "" if t.state.name == "COMPLETE" else f" ({t.state.name.lower()})"
        assert run.info.run_name == f"trial-{t.number:04d}{suffix}" and run.info.status == "FINISHED"
        assert run.data.tags["optuna.study"] == "default" and run.data.tags["optuna.state"] == t.state.name
        # every resolved config field is a param, with the sampled values
        assert set(run.data.params) == set(Config().flat())
        assert float(run.data.params["train.lr"]) == t.params["train.lr"]
        assert int(run.data.params["train.epochs"]) == t.params["train.epochs"]
        # one point per epoch, step = epoch
        history = client.get_metric_history(run.info.run_id, "val_dice")
        assert [m.step for m in history] == list(range(1, t.user_attrs["epochs_run"] + 1))
        for key in ("train_loss", "val_loss", "val_f1_macro", "val_miou", "val_pixel_accuracy",
                    "epoch_seconds", "images_per_second"):
            assert len(client.get_metric_history(run.info.run_id, key)) == len(history)
        rates = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "lr"), key=lambda m: m.step)]
        assert len(rates) == len(history) and rates == sorted(rates, reverse=True)  # the poly schedule, per epoch
        # the trial's value and best epoch are columns of the runs table, equal to Optuna's
        best_epoch = max(history, key=lambda m: m.value).step
        assert run.data.metrics["best_val_dice"] == pytest.approx(max(m.value for m in history))
        assert run.data.metrics["best_epoch"] == best_epoch == t.user_attrs["best_epoch"]
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert max(m.value for m in history) == pytest.approx(t.value)
            assert run.data.tags["early_stopped"] in ("true", "false")
        # a complete trial's files; a pruned one's tables, and what its figures are drawn from on demand
        expected = TRIAL_ARTIFACTS if t.state == optuna.trial.TrialState.COMPLETE else PRUNED_ARTIFACTS
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == expected


@pytest.mark.slow
def test_the_study_s_run_tells_the_search_s_story(three_trials):
    home, _ = three_trials
    client, _, parents, _ = mlflow_runs(home)
    parent = parents[0]
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {"study_plots.html", "trials.csv",
                                                                            "space.toml"}
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    assert client.get_metric_history(parent.info.run_id, "best_value")
    # the parent tells the search's story: its params, the best trial kept current, a Markdown note
    best = load(home).best_trial
    tags, params = client.get_run(parent.info.run_id).data.tags, client.get_run(parent.info.run_id).data.params
    assert {"space", "data", "sampler", "pruner", "brackets", "metric", "seed"} <= set(params)
    assert tags["best_trial"] == str(best.number) and tags["best_run_id"] == best.user_attrs["mlflow_run_id"]
    assert float(tags["best_value"]) == pytest.approx(best.value) and tags["trials_target"] == "3"
    note = tags["mlflow.note.content"]
    # first the best trial, linked to its run's model-training page, with its value and params
    assert note.startswith(f"**Best trial: [#{best.number}](#/experiments/")
    assert f"/runs/{best.user_attrs['mlflow_run_id']}?workflowType=machine_learning)**" in note.splitlines()[0]
    assert f"{best.value:.4f}" in note.splitlines()[0] and "`train.lr` = " in note.splitlines()[0]
    # then the counts and the retrain command, before MLflow's "Show more" (it came after the live view's link)
    assert note.splitlines()[2].startswith("Study `default`: ") and "`unet-opt retrain --best" in note.splitlines()[2]


@pytest.mark.slow
def test_the_runs_table_opens_ranked_and_the_summary_says_where(three_trials):
    home, out = three_trials
    _, experiments, _, _ = mlflow_runs(home)
    # the experiment carries the runs table's ranked view, and the summary says where it is
    view = json.loads(experiments[0].tags["mlflow.sharedViewState.unet-opt-ranked"])
    assert view["orderByKey"] == "metrics.`best_val_dice`" and view["orderByAsc"] is False
    assert view["selectedColumns"][:2] == ["metrics.`best_val_dice`", "metrics.`best_epoch`"]
    assert "params.`train.lr`" in view["selectedColumns"]
    assert view["columnWidths"]["params.`data.image_size`"] >= 8 * len("data.image_size") + 40  # not cut short
    assert view["columnOrder"] == view["selectedColumns"]  # MLflow applies the widths of the columns it orders
    client = MlflowClient(f"sqlite:///{home}/mlruns/mlflow.db")
    listed = client.search_runs([experiments[0].experiment_id], view["searchFilter"])  # the view's rows
    assert sorted(r.data.tags["optuna.trial"] for r in listed) == ["0", "1", "2"]  # the trials, not the study
    ranked = (f"`unet-opt ui`, then open http://127.0.0.1:5000/#/experiments/{experiments[0].experiment_id}/runs?"
              "viewStateShareKey=unet-opt-ranked&workflowType=machine_learning")
    assert "best trial: #" in out and ranked in out
    from optuna_dashboard import get_note

    # the live view's note links to the same table (written by the search's writer process)
    assert get_note(load(home)).endswith(f"[{ranked.split(' ')[-1]}]({ranked.split(' ')[-1]})")


@pytest.mark.slow
def test_the_same_command_again_does_nothing_and_a_larger_one_extends_the_study(three_trials, home, cli):
    for name in ("studies", "mlruns"):  # a copy: the other tests read the study as the search left it
        shutil.copytree(three_trials[0] / name, home / name)
    # the same command again: nothing to do
    code, out, _ = cli("search", "--trials", "3", "--seed", "1", *FAST)
    assert code == 0 and "already has 3 finished trials" in out
    # one more trial: same study, same parent run, and new params (not trial 0's again)
    code, _, _ = cli("search", "--trials", "4", "--seed", "1", *FAST)
    assert code == 0
    _, _, parents, children = mlflow_runs(home)
    assert len(parents) == 1 and len(children) == 4
    assert_no_param_set_repeats(load(home))

    code, out, _ = cli("report", "--json")
    report = json.loads(out)
    assert report["study"] == "default" and len(report["trials"]) == 4
    assert {t["mlflow_run_id"] for t in report["trials"]} == {c.info.run_id for c in children}
    assert set(report["best"]) == {"number", "value", "params", "mlflow_run_id"}
    code, out, _ = cli("report")  # the table: epochs run ("ran") beside the epochs each trial drew
    assert code == 0 and out.splitlines()[2].split()[:5] == ["#", "state", "val_dice", "best_epoch", "ran"]
    # the epoch of its value, which `retrain --best` trains for: only `--json` had it (a review)
    header = out.splitlines()[2].split()
    assert header[5:-1] == list(report["trials"][0]["params"])  # the space's order, as the search shows them
    rows = [line.split() for line in out.splitlines()[3:]]
    assert {row[0]: row[3] for row in rows if row[1] == "complete"} == {
        str(t["number"]): str(t["best_epoch"]) for t in report["trials"] if t["state"] == "complete"}
    code, out, _ = cli("studies")
    assert code == 0 and "default" in out


@pytest.mark.slow
def test_an_extended_search_draws_new_params_and_a_new_one_draws_the_same(home, cli, tmp_path):
    # --trials 2, then --trials 4 in the same folder; and --trials 4 at once in another
    assert cli("search", "--trials", "2", "--pruner", "none", *FAST)[0] == 0
    assert cli("search", "--trials", "4", "--pruner", "none", *FAST)[0] == 0
    extended = load(home)
    assert_no_param_set_repeats(extended)  # each process seeds trial N from the study seed and N
    other = tmp_path / "other"
    other.mkdir()
    assert cli("--home", str(other), "search", "--trials", "4", "--pruner", "none", *FAST)[0] == 0
    # a search run again from scratch draws the same trials: reproducible as before
    assert [t.params for t in load(other).trials] == [t.params for t in extended.trials]


@pytest.mark.slow
def test_a_failing_trial_does_not_stop_the_search(home):
    summary = run_search(home, 2, fit=partial(fits.fail_on_call, [], 2, RuntimeError("disk on fire")))
    assert not summary.failed_out and not summary.interrupted
    study = optuna.load_study(study_name="default", storage=f"sqlite:///{home}/studies/unet-opt.db")
    states = [t.state.name for t in study.trials]
    # the failure is recorded with its reason, and a third trial replaces it
    assert states.count("FAIL") == 1 and len(states) == 3
    failed = next(t for t in study.trials if t.state.name == "FAIL")
    assert failed.user_attrs["fail_reason"] == "RuntimeError: disk on fire"
    _, _, _, children = mlflow_runs(home)
    run = next(c for c in children if c.info.run_id == failed.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["optuna.state_reason"] == "RuntimeError: disk on fire"


@pytest.mark.slow
def test_ctrl_c_records_the_trial_and_the_same_command_continues(home, cli):
    summary = run_search(home, 3, fit=partial(fits.fail_on_call, [], 2, KeyboardInterrupt()))
    # the search stops, the trial is FAIL/KILLED as interrupted
    assert summary.interrupted
    study = optuna.load_study(study_name="default", storage=f"sqlite:///{home}/studies/unet-opt.db")
    assert [t.state.name for t in study.trials][1] == "FAIL"
    assert study.trials[1].user_attrs["fail_reason"] == "interrupted"
    client, _, parents, children = mlflow_runs(home)
    assert {c.info.status for c in children if c.data.tags["optuna.trial"] == "1"} == {"KILLED"}
    # one vocabulary and one count, kept current when the stop landed: the summary, the note, report
    assert summary.counts["interrupted"] == 1 and summary.counts["fail"] == 0
    note = client.get_run(parents[0].info.run_id).data.tags["mlflow.note.content"]
    assert "1 interrupted" in note and "fail" not in note
    code, out, _ = cli("report", "--json")
    assert [t["state"] for t in json.loads(out)["trials"]][1] == "interrupted"

    code, _, _ = cli("search", "--trials", "3", *FAST)
    assert code == 0
    study = optuna.load_study(study_name="default", storage=f"sqlite:///{home}/studies/unet-opt.db")
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    # 3 finished, no number reused, nothing left running, one parent run throughout
    assert len(finished) == 3 and [t.number for t in study.trials] == [0, 1, 2, 3]
    _, _, parents, children = mlflow_runs(home)
    assert len(parents) == 1 and not [c for c in children if c.info.status == "RUNNING"]
    assert_no_param_set_repeats(study)  # the resumed process drew new params


@pytest.mark.slow
def test_ctrl_c_while_a_trial_s_files_are_written_records_it_as_interrupted(home):
    summary = run_search(home, 2, fit=fits.interrupt_while_logging_artifacts)
    assert summary.interrupted
    (trial,) = load(home).trials
    # not left RUNNING: interrupted in Optuna, KILLED in MLflow
    assert trial.state.name == "FAIL" and trial.user_attrs["fail_reason"] == "interrupted"
    run = MlflowClient(f"sqlite:///{home}/mlruns/mlflow.db").get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["optuna.state_reason"] == "interrupted"


@pytest.mark.slow
def test_changed_configuration_of_an_existing_study_is_refused(home, cli):
    assert cli("search", "--trials", "1", *FAST)[0] == 0
    code, _, err = cli("search", "--trials", "2", *FAST, "--set", "train.patience=9")
    assert code == 2 and "changed: train.patience " in err and "--study NEW_NAME" in err
    # how its trials are drawn and stopped is the study's too: its parent run records it once
    code, _, err = cli("search", "--trials", "2", *FAST, "--pruner", "none", "--sampler", "random", "--seed", "7")
    assert code == 2 and 'changed: search.pruner "contenders" -> "none", search.sampler "tpe" -> "random", ' \
                         "search.seed 0 -> 7)" in err
    # a study made before that was stored is not held to it
    from unet_opt.study.storage import open_storage, store_setup

    storage = open_storage(f"sqlite:///{home}/studies/unet-opt.db")
    stored = study_setup(storage, "default")["config"]
    store_setup(storage, "default", "config", {k: v for k, v in stored.items() if not k.startswith("search.s")})
    assert cli("search", "--trials", "2", *FAST, "--seed", "7")[0] == 0


def test_a_changed_space_is_named_by_its_table_and_field_not_as_the_space():
    """An edited space file is refused: the message names what to put back."""
    from unet_opt.config.space_file import config_from_text
    from unet_opt.errors import UserError
    from unet_opt.study.storage import check_same_study, comparable

    text = ('[space.lr]\ntype = "float"\nlow = 1e-4\nhigh = 5e-2\nlog = true\n'
            '[space.epochs]\ntype = "int"\nlow = 3\nhigh = 20\n')
    stored = comparable(config_from_text(text, "small.toml"))
    edited = text.replace("high = 5e-2", "high = 1e-1").replace("log = true", "log = false") \
        .replace("[space.epochs]", '[space."model.base_channels"]')
    with pytest.raises(UserError) as refused:
        check_same_study(stored, comparable(config_from_text(edited, "small.toml")), "small")
    assert "changed: [space.\"model.base_channels\"] added, [space.\"train.epochs\"] removed, " \
           "[space.\"train.lr\"] high 0.05 -> 0.1, [space.\"train.lr\"] log true -> false);" in str(refused.value)
    check_same_study(stored, comparable(config_from_text(text.replace("5e-2", "0.05"), "small.toml")), "small")


@pytest.mark.slow
def test_timeout_0_on_the_command_line_means_none_as_in_a_space_file(home, cli):
    default = (Path(__file__).parents[2] / "search" / "default.toml").read_text()
    (home / "quick.toml").write_text(default.replace("[search]\n", "[search]\ntimeout = 0.001\n"))  # before trial 0
    code, out, _ = cli("search", "--space", "quick.toml", "--trials", "1", *FAST)
    assert code == 0 and "0/1 finished trials" in out and "timeout of 0.001 s reached" in out
    code, out, _ = cli("search", "--space", "quick.toml", "--trials", "1", "--timeout", "0", *FAST)
    assert code == 0 and "1/1 finished trials" in out


@pytest.mark.slow
def test_timeout_stops_starting_trials_and_home_moves_the_stores(home, cli):
    elsewhere = home / "project"
    code, out, err = cli("--home", str(elsewhere), "search", "--trials", "5", "--timeout", "1", "--pruner", "none",
                         *FAST, "--set", "space.epochs.high=100", "--set", "space.epochs.low=80",
                         "--set", "train.patience=100")  # trials of 2 s+ (an epoch takes ~30 ms): no plateau ends them
    assert code == 0, err
    # the first trial starts at once and outlasts the 1 s budget: no second trial starts
    assert "1 run now" in out and "timeout of 1 s reached" in out
    # studies/ and mlruns/ live under --home, nothing in the working directory
    assert (elsewhere / "studies" / "unet-opt.db").is_file() and (elsewhere / "mlruns" / "mlflow.db").is_file()
    assert not (home / "studies").exists() and not (home / "mlruns").exists()
    study = optuna.load_study(study_name="default", storage=f"sqlite:///{elsewhere}/studies/unet-opt.db")
    assert len(study.trials) == 1


@pytest.mark.parametrize("lost, message", [
    ("studies", "the MLflow experiment 'unet-opt-default' in sqlite:///"),  # an emptied study storage, the
    # experiment by its own name (a review)
    ("mlruns", "records its runs under MLflow parent run"),  # a deleted MLflow store
])
@pytest.mark.slow
def test_two_stores_that_do_not_belong_together_are_refused(searched_home, cli, lost, message):
    shutil.rmtree(searched_home / lost)
    code, _, err = cli("search", "--trials", "2", *FAST)
    # one line naming both stores and the way out; no second parent, no trial-0000 again
    assert code == 2 and message in err and "--study NEW_NAME" in err and len(err.strip().splitlines()) == 1, err
    assert "unet-opt.db" in err and "mlflow.db" in err
    assert lost != "studies" or "/mlruns/mlflow.db holds the runs of a study 'default' (parent run " in err


def test_the_summary_names_the_ui_command_for_this_search_s_store(tmp_path, monkeypatch):
    from unet_opt.config.paths import Paths
    from unet_opt.tracking.ui import ui_command_line

    monkeypatch.chdir(tmp_path)
    assert ui_command_line(Paths.resolve(tmp_path).home, None) == "unet-opt ui"
    elsewhere = tmp_path / "my project"
    elsewhere.mkdir()
    assert ui_command_line(Paths.resolve(elsewhere).home, None) == f"unet-opt --home '{elsewhere}' ui"
    server = "http://me:secret@tracker:5000"
    assert ui_command_line(Paths.resolve(tmp_path).home, server) == "unet-opt ui --tracking-uri 'http://me:***@tracker:5000'"


@pytest.mark.slow
def test_a_study_made_before_the_recipe_fields_resumes_and_retrains_with_its_own_recipe(home, cli):
    """Its stored config lacks train.loss, data.eval_size and the rest: it trained with unweighted
    cross-entropy at a constant rate, each trial scored at its own frame, and goes on (and retrains) so, not
    with today's defaults; nor is it refused as changed."""
    from mlflow.tracking import MlflowClient

    from unet_opt.config.schema import BEFORE_THE_FIELD_EXISTED
    from unet_opt.study.storage import store_setup

    assert cli("search", "--trials", "1", "--pruner", "none", *FAST)[0] == 0
    study = optuna.load_study(study_name="default", storage=f"sqlite:///{home}/studies/unet-opt.db")
    setup = study_setup(study._storage, "default")
    fields = {k.split(".")[1] for k in BEFORE_THE_FIELD_EXISTED}
    store_setup(study._storage, "default", "config",
                {k: v for k, v in setup["config"].items() if k not in BEFORE_THE_FIELD_EXISTED})
    store_setup(study._storage, "default", "config_toml", "\n".join(
        line for line in setup["config_toml"].splitlines() if line.split(" = ")[0] not in fields))
    code, _, err = cli("search", "--trials", "2", "--pruner", "none", *FAST)
    assert code == 0, err
    assert cli("retrain", "--best")[0] == 0
    client = MlflowClient(f"sqlite:///{home}/mlruns/mlflow.db")
    runs = [r for r in client.search_runs([client.get_experiment_by_name("unet-opt-default").experiment_id])
            if r.info.run_name.startswith(("trial-0001", "retrain"))]
    assert len(runs) == 2
    for run in runs:  # trained with its old recipe, and scored at each trial's own frame as it was
        assert {k: run.data.params[k] for k in ("train.loss", "train.class_weights", "train.schedule",
                                                "data.eval_size")} == \
            {"train.loss": "ce", "train.class_weights": "none", "train.schedule": "constant",
             "data.eval_size": "-1"}, run.info.run_name


@pytest.mark.slow  # a search in a subprocess or a kill: over 10 s on a 2-core CPU
def test_the_study_s_plots_are_drawn_by_the_writer_and_the_search_never_imports_their_libraries(home):
    """plotly and scikit-learn (the importances) took the search ~2 s after its last trial; its writer has
    them imported while trials train, and draws the plots from the trials as they ended."""
    script = ("import sys\nfrom unet_opt.cli.app import main\n"
              f"try:\n    main({['search', '--trials', '2', *FAST]!r})\nexcept SystemExit as e:\n"
              "    print(e.code, sorted(m for m in ('plotly', 'sklearn') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.stdout.splitlines()[-1] == "0 []", proc.stdout + proc.stderr
    client, _, parents, _ = mlflow_runs(home)
    html = Path(client.download_artifacts(parents[0].info.run_id, "study_plots.html")).read_text()
    assert html.count("<h2>") == 4 and "not available yet" not in html  # two complete trials: importances too
    assert "val_dice" in html  # the objective by its name, as the study's


@pytest.mark.slow  # a search in a subprocess
def test_the_search_s_writer_is_forked_before_mlflow_and_optuna_are_imported(home):
    """Forked once torch is imported, the writer imports its drawing libraries on the other core while the
    search imports MLflow and Optuna: a tiny search's last files were drawn ~1 s sooner
    (benchmarks/README.md). It draws the trial's files all the same."""
    script = ("import sys\nfrom unet_opt.cli.app import main\nfrom unet_opt.tracking.writer import ArtifactWriter\n"
              "started = ArtifactWriter.started.__func__\n"
              "def watched(cls, *args):\n"
              "    print('imported:', sorted(m for m in ('mlflow', 'optuna') if m in sys.modules))\n"
              "    return started(cls, *args)\n"
              "ArtifactWriter.started = classmethod(watched)\n"
              f"try:\n    main({['search', '--trials', '1', *FAST]!r})\nexcept SystemExit as e:\n"
              "    print('exit', e.code)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    lines = proc.stdout.splitlines()
    assert lines[0] == "imported: []" and lines[-1] == "exit 0", proc.stdout + proc.stderr
    client, _, _, children = mlflow_runs(home)
    assert {a.path for a in client.list_artifacts(children[0].info.run_id)} >= TRIAL_ARTIFACTS


def test_the_study_s_plots_name_the_objective_by_the_study_s_metric(tmp_path):
    study = optuna.create_study(direction="maximize")
    study.set_metric_names(["val_miou"])

    def objective(t):
        value = t.suggest_float("train.lr", 1e-4, 1e-2, log=True) * 100
        t.report(value, 1)
        return value

    for value in (0.2, 0.5, 0.4):
        study.enqueue_trial({"train.lr": value / 100})
        study.optimize(objective, n_trials=1)
    write_study_plots(study, tmp_path / "study_plots.html")
    page = (tmp_path / "study_plots.html").read_text()
    page = page[page.index("<h1>"):]  # past plotly.js
    assert "Objective Value" not in page and page.count("val_miou") >= 3  # history, importances, coordinates
    # a review: the intermediate values' axes read "Step" and "Intermediate Value", each plot was 100 % of a tall
    # window high, and each was titled twice (the section's heading and Optuna's own)
    assert '"title":{"text":"epoch"}' in page and '"title":{"text":"best val_miou so far"}' in page
    assert "Intermediate Value" not in page and "Optimization History Plot" not in page
    assert page.count('<div style="height:520px; width:100%;">') == 4 and '<div style="height:100%' not in page


@pytest.mark.slow
def test_a_space_that_searches_nothing_is_said(home, cli):
    (home / "fixed.toml").write_text("[data]\nimage_size = 32\nsynthetic_images = 24\n[model]\nbase_channels = 8\n"
                                     "[train]\nepochs = 1\n")
    code, _, err = cli("search", "--space", "fixed.toml", "--trials", "2")
    assert code == 0, err
    assert "fixed.toml searches nothing (it has no [space.NAME] table): every trial trains the same " \
           "config, each with its own seed" in err
    assert "trial 1/2 (#0): seed " in err  # what tells its trials apart, not an empty line
    (home / "searched.toml").write_text((home / "fixed.toml").read_text() + "[space.lr]\ntype = 'categorical'\n"
                                        "choices = [0.001, 0.002]\n")
    code, _, err = cli("search", "--space", "searched.toml", "--trials", "2")  # one searched parameter is enough
    assert code == 0 and "searches nothing" not in err
    assert "above the" not in err  # batches of up to 16 of 24 images' training split: nothing to say
    code, _, err = cli("search", "--space", "searched.toml", "--study", "few", "--trials", "1",
                       "--set", "data.synthetic_images=12", "--set", "train.batch_size=12")
    assert code == 0 and "train.batch_size is 12, above the 8 images of the training split: it trains on one " \
                         "batch of 8 an epoch" in err, err
    (home / "batches.toml").write_text((home / "searched.toml").read_text() + "[space.batch_size]\ntype = 'int'\n"
                                       "low = 4\nhigh = 12\nstep = 4\n")
    code, _, err = cli("search", "--space", "batches.toml", "--trials", "1", "--set", "data.synthetic_images=12")
    assert code == 0 and "train.batch_size goes up to 12, above the 8 images of the training split: such trials " \
                         "train on one batch of 8 an epoch" in err, err
    code, _, err = cli("train", "--space", "fixed.toml", "--set", "data.synthetic_images=12",
                       "--set", "train.batch_size=12")  # a baseline too (a review)
    assert code == 0 and "train.batch_size is 12, above the 8 images" in err, err
