"""A real search in a temporary folder: the Optuna study and the MLflow runs, field by field."""

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

from unet_opt.config.schema import Config
from unet_opt.config.space_file import load_config
from unet_opt.study.pruning import make_pruner, max_epochs
from unet_opt.study.storage import study_setup

TRIAL_ARTIFACTS = {"config.toml", "learning_curves.png", "confusion_matrix.png", "confusion_matrix.csv",
                   "per_class.csv", "predictions.png"}


def mlflow_runs(home):
    client = MlflowClient(f"sqlite:///{home}/mlruns/mlflow.db")
    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    runs = client.search_runs([e.experiment_id for e in experiments], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("unet_opt.role") == "study"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, experiments, parents, children


def test_three_trial_search_is_recorded_in_optuna_and_mlflow(home, cli):
    code, out, err = cli("search", "--trials", "3", "--seed", "1", *FAST)
    assert code == 0, err
    study = optuna.load_study(study_name="default", storage=f"sqlite:///{home}/studies/unet-opt.db")
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

    client, experiments, parents, children = mlflow_runs(home)
    # one experiment named after the study, one parent run, one child per trial under it
    assert [e.name for e in experiments] == ["unet-opt-default"]
    assert len(parents) == 1 and len(children) == 3
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    by_number = {int(c.data.tags["optuna.trial"]): c for c in children}
    for t in trials:
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
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == TRIAL_ARTIFACTS
    parent = parents[0]
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {"study_plots.html", "trials.csv",
                                                                            "space.toml"}
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    assert client.get_metric_history(parent.info.run_id, "best_value")
    # the parent tells the search's story: its params, the best trial kept current, a Markdown note
    best = study.best_trial
    tags, params = client.get_run(parent.info.run_id).data.tags, client.get_run(parent.info.run_id).data.params
    assert {"space", "data", "sampler", "pruner", "brackets", "metric", "seed"} <= set(params)
    assert tags["best_trial"] == str(best.number) and tags["best_run_id"] == best.user_attrs["mlflow_run_id"]
    assert float(tags["best_value"]) == pytest.approx(best.value) and tags["trials_target"] == "3"
    note = tags["mlflow.note.content"]
    assert f"[#{best.number}](#/experiments/" in note and "unet-opt retrain --best" in note and "| `train.lr` |" in note
    assert study.metric_names == ["val_dice"]
    # the experiment carries the runs table's ranked view, and the summary says where it is
    view = json.loads(experiments[0].tags["mlflow.sharedViewState.unet-opt-ranked"])
    assert view["orderByKey"] == "metrics.`best_val_dice`" and view["orderByAsc"] is False
    assert view["selectedColumns"][:2] == ["metrics.`best_val_dice`", "metrics.`best_epoch`"]
    assert "params.`train.lr`" in view["selectedColumns"]
    ranked = (f"`unet-opt ui`, then open http://127.0.0.1:5000/#/experiments/{experiments[0].experiment_id}/runs?"
              "viewStateShareKey=unet-opt-ranked&workflowType=machine_learning")
    assert "best trial: #" in out and ranked in out

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
    code, out, _ = cli("studies")
    assert code == 0 and "default" in out


def load(home) -> optuna.Study:
    return optuna.load_study(study_name="default", storage=f"sqlite:///{home}/studies/unet-opt.db")


def assert_no_param_set_repeats(study: optuna.Study) -> None:
    sets = [tuple(sorted(t.params.items())) for t in study.trials if t.params]
    assert len(set(sets)) == len(sets), sets


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


def test_ctrl_c_records_the_trial_and_the_same_command_continues(home, cli):
    summary = run_search(home, 3, fit=partial(fits.fail_on_call, [], 2, KeyboardInterrupt()))
    # the search stops, the trial is FAIL/KILLED as interrupted
    assert summary.interrupted
    study = optuna.load_study(study_name="default", storage=f"sqlite:///{home}/studies/unet-opt.db")
    assert [t.state.name for t in study.trials][1] == "FAIL"
    assert study.trials[1].user_attrs["fail_reason"] == "interrupted"
    _, _, parents, children = mlflow_runs(home)
    assert {c.info.status for c in children if c.data.tags["optuna.trial"] == "1"} == {"KILLED"}

    code, _, _ = cli("search", "--trials", "3", *FAST)
    assert code == 0
    study = optuna.load_study(study_name="default", storage=f"sqlite:///{home}/studies/unet-opt.db")
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    # 3 finished, no number reused, nothing left running, one parent run throughout
    assert len(finished) == 3 and [t.number for t in study.trials] == [0, 1, 2, 3]
    _, _, parents, children = mlflow_runs(home)
    assert len(parents) == 1 and not [c for c in children if c.info.status == "RUNNING"]
    assert_no_param_set_repeats(study)  # the resumed process drew new params


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
    assert code == 2 and "changed: train.patience" in err and "--study NEW_NAME" in err


@pytest.mark.slow
def test_timeout_stops_starting_trials_and_home_moves_the_stores(home, cli):
    elsewhere = home / "project"
    code, out, err = cli("--home", str(elsewhere), "search", "--trials", "5", "--timeout", "1", "--pruner", "none",
                         *FAST, "--set", "space.epochs.high=30", "--set", "space.epochs.low=20",
                         "--set", "train.patience=30")  # trials of 2 s+: not ended early by a plateau
    assert code == 0, err
    # the first trial starts at once and outlasts the 1 s budget: no second trial starts
    assert "1 run now" in out and "timeout of 1 s reached" in out
    # studies/ and mlruns/ live under --home, nothing in the working directory
    assert (elsewhere / "studies" / "unet-opt.db").is_file() and (elsewhere / "mlruns" / "mlflow.db").is_file()
    assert not (home / "studies").exists() and not (home / "mlruns").exists()
    study = optuna.load_study(study_name="default", storage=f"sqlite:///{elsewhere}/studies/unet-opt.db")
    assert len(study.trials) == 1


def epochs_run(pruner: optuna.pruners.BasePruner, curves: list[list[float]], direction: str = "maximize") -> list[int]:
    """Replays one trial per curve through `pruner`; the epochs each trial ran."""
    # Hyperband picks a trial's bracket from a hash of the study name: a fixed name keeps the tests exact
    study = optuna.create_study(study_name="default", direction=direction, pruner=pruner)
    ran = []
    for curve in curves:
        trial = study.ask()
        for epoch, value in enumerate(curve, 1):
            trial.report(value, epoch)
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, curve[-1])
        ran.append(epoch)
    return ran


def epochs_pruned_after(pruner: optuna.pruners.BasePruner) -> list[int]:
    """40 trials of 20 epochs, every one worse than all before it: each is pruned at its bracket's first rung."""
    # no rung is at epoch 20, so a trial that ran 20 epochs completed
    return [epochs for epochs in epochs_run(pruner, [[1.0 - n / 100] * 20 for n in range(40)]) if epochs < 20]


@pytest.mark.parametrize("brackets, first_judged", [(None, {1, 3}), (3, {1, 3, 9}), (1, {1})])
def test_hyperband_brackets_set_the_epochs_a_trial_is_first_judged_after(brackets, first_judged):
    cfg = load_config("default", {"search.brackets": brackets} if brackets else None)
    # the default is 2, not the 3 that max_resource = the space's 20 epochs would make (README, Measured)
    assert cfg.search.pruner == "hyperband" and cfg.search.brackets == (brackets or 2)
    assert max_epochs(cfg) == 20
    pruned_after = epochs_pruned_after(make_pruner(cfg))
    assert set(pruned_after) == first_judged and len(pruned_after) >= 40 - 2 * len(first_judged)


def test_three_brackets_prune_as_the_old_default_did():
    # README: `--set search.brackets=3` makes the brackets of the default before (max_resource = 20 epochs)
    cfg = load_config("default", {"search.brackets": 3})
    old = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=20, reduction_factor=3)
    pruner = make_pruner(cfg)
    assert epochs_pruned_after(pruner.hyperband) == epochs_pruned_after(old) and pruner.study_epoch == 9


@pytest.mark.parametrize("direction, sign", [("maximize", 1), ("minimize", -1)])
def test_hyperband_prunes_a_bracket_s_first_trial_in_the_study_s_bottom_quarter_at_epoch_3(direction, sign):
    good = [sign * v for v in (0.2, 0.4, 0.5, 0.55, 0.6, 0.6)]
    poor = [sign * v for v in (0.05, 0.08, 0.1, 0.2, 0.3, 0.35)]
    cfg = load_config("default")
    pruner = make_pruner(cfg)
    # Optuna's Hyperband alone lets trial 1, the first of its bracket, run to the end however poor it is
    alone = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=8, reduction_factor=3)
    assert epochs_run(alone, [good, poor], direction) == [6, 6]
    # below trial 0, the only other, at epoch 3: one peer is no judgement, so it runs on
    assert epochs_run(pruner, [good, poor], direction) == [6, 6]
    # the study-wide rule alone (its bracket never prunes here): below four others at epoch 3, pruned
    # there, and the reason names the rule and the peers
    study_rule = make_pruner(cfg)
    study_rule.hyperband = optuna.pruners.NopPruner()
    assert epochs_run(study_rule, [good] * 4 + [poor], direction) == [6, 6, 6, 6, 3]
    assert study_rule.reason == "bottom quarter of 4 trials"
    assert epochs_run(study_rule, [good] * 3 + [poor], direction) == [6, 6, 6, 6]  # three peers: runs on


@pytest.mark.parametrize("direction, sign", [("maximize", 1), ("minimize", -1)])
def test_the_study_wide_check_prunes_the_bottom_quarter_at_epoch_3_only(direction, sign):
    pruner = make_pruner(load_config("default"))

    def judged(value, epoch=3):
        study = optuna.create_study(direction=direction)
        for v in (0.5, 0.4, 0.3, 0.2, 0.1):  # the others after epoch 3: their bottom quarter is below 0.2
            study.add_trial(optuna.trial.create_trial(value=sign * v, intermediate_values={1: sign * v, 3: sign * v}))
        trial = study.ask()
        trial.report(sign * value, epoch)
        return pruner.in_bottom_quarter(study, study.trials[-1])

    assert judged(0.19) == 5 and not judged(0.21)  # 0.21 is below the median, 0.3, and goes on
    assert not judged(0.0, epoch=2)  # judged by the whole study only at epoch 3


def test_halving_pruner_keeps_the_top_third_after_epochs_1_3_9():
    cfg = Config().replace({"search.pruner": "halving"})
    study = optuna.create_study(direction="maximize", pruner=make_pruner(cfg))

    def pruned_at(curve):  # replays a trial's best-so-far values; the epoch it is pruned after, or None
        trial = study.ask()
        for epoch, value in enumerate(curve, 1):
            trial.report(value, epoch)
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                return epoch
        study.tell(trial, curve[-1])
        return None

    assert pruned_at([0.5, 0.5, 0.6, 0.6]) is None  # the first trial has no one to lose to
    assert pruned_at([0.4]) == 1  # with fewer than 3 peers, only the best goes on
    assert pruned_at([0.55, 0.55, 0.55]) == 3  # the best of {0.5, 0.4, 0.55} after epoch 1, not of {0.6, 0.55}
    assert pruned_at([0.9, 0.1, 0.9, 0.9]) is None  # a poor epoch 2 is not judged


@pytest.mark.parametrize("lost, message", [
    ("studies", "already holds the runs of a study 'default'"),  # an emptied study storage
    ("mlruns", "records its runs under MLflow parent run"),  # a deleted MLflow store
])
def test_two_stores_that_do_not_belong_together_are_refused(searched_home, cli, lost, message):
    shutil.rmtree(searched_home / lost)
    code, _, err = cli("search", "--trials", "2", *FAST)
    # one line naming both stores and the way out; no second parent, no trial-0000 again
    assert code == 2 and message in err and "--study NEW_NAME" in err and len(err.strip().splitlines()) == 1, err
    assert "unet-opt.db" in err and "mlflow.db" in err


def test_the_summary_names_the_ui_command_for_this_search_s_store(tmp_path, monkeypatch):
    from unet_opt.config.paths import Paths
    from unet_opt.study.search import ui_command_line

    cfg = load_config("default", {}, [])
    monkeypatch.chdir(tmp_path)
    assert ui_command_line(Paths.resolve(tmp_path), cfg) == "unet-opt ui"
    elsewhere = tmp_path / "my project"
    elsewhere.mkdir()
    assert ui_command_line(Paths.resolve(elsewhere), cfg) == f"unet-opt --home '{elsewhere}' ui"
    server = cfg.replace({"search.tracking_uri": "http://me:secret@tracker:5000"})
    assert ui_command_line(Paths.resolve(tmp_path), server) == "unet-opt ui --tracking-uri 'http://me:***@tracker:5000'"


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
