"""The pruners replayed on in-memory studies: which epochs judge a trial, and against whom."""

from fractions import Fraction

import optuna
import pytest

from unet_opt.config.schema import Config
from unet_opt.config.space_file import load_config
from unet_opt.study.pruning import make_pruner, max_epochs, prune_reason


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
    cfg = load_config("default", {"search.pruner": "hyperband", **({"search.brackets": brackets} if brackets else {})})
    # the default is 2, not the 3 that max_resource = the space's 20 epochs would make (README, Measured)
    assert cfg.search.brackets == (brackets or 2)
    assert max_epochs(cfg) == 20
    pruned_after = epochs_pruned_after(make_pruner(cfg))
    assert set(pruned_after) == first_judged and len(pruned_after) >= 40 - 2 * len(first_judged)


def test_three_brackets_prune_as_the_old_default_did():
    # README: `--set search.brackets=3` makes the brackets of the default before (max_resource = 20 epochs)
    cfg = load_config("default", {"search.pruner": "hyperband", "search.brackets": 3})
    old = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=20, reduction_factor=3)
    pruner = make_pruner(cfg)
    assert epochs_pruned_after(pruner.hyperband) == epochs_pruned_after(old) and pruner.study_epoch == 9


@pytest.mark.parametrize("direction, sign", [("maximize", 1), ("minimize", -1)])
def test_hyperband_prunes_a_bracket_s_first_trial_in_the_study_s_bottom_quarter_at_epoch_3(direction, sign):
    good = [sign * v for v in (0.2, 0.4, 0.5, 0.55, 0.6, 0.6)]
    poor = [sign * v for v in (0.05, 0.08, 0.1, 0.2, 0.3, 0.35)]
    cfg = load_config("default", {"search.pruner": "hyperband"})
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
    pruner = make_pruner(load_config("default", {"search.pruner": "hyperband"}))

    def judged(value, epoch=3):
        study = optuna.create_study(direction=direction)
        for v in (0.5, 0.4, 0.3, 0.2, 0.1):  # the others after epoch 3: their bottom quarter is below 0.2
            study.add_trial(optuna.trial.create_trial(value=sign * v, intermediate_values={1: sign * v, 3: sign * v}))
        trial = study.ask()
        trial.report(sign * value, epoch)
        return pruner.in_bottom_quarter(study, study.trials[-1])

    assert judged(0.19) == 5 and not judged(0.21)  # 0.21 is below the median, 0.3, and goes on
    assert not judged(0.0, epoch=2)  # judged by the whole study only at epoch 3


def replay(study: optuna.Study, scheduled: int, curve: list[float]) -> int | None:
    """One trial drawn to run `scheduled` epochs, its best-so-far values replayed: the epoch it is pruned
    after, or None."""
    study.enqueue_trial({"train.epochs": scheduled})
    trial = study.ask({"train.epochs": optuna.distributions.IntDistribution(1, 40)})
    for epoch, value in enumerate(curve, 1):
        trial.report(value, epoch)
        if trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return epoch
    study.tell(trial, curve[-1])
    return None


def test_halving_pruner_keeps_the_top_third_after_epochs_1_3_9():
    cfg = Config().replace({"search.pruner": "halving"})
    study = optuna.create_study(direction="maximize", pruner=make_pruner(cfg))

    def pruned_at(curve):  # halving ignores a trial's scheduled epochs
        return replay(study, 20, curve)

    assert pruned_at([0.5, 0.5, 0.6, 0.6]) is None  # the first trial has no one to lose to
    assert pruned_at([0.4]) == 1  # with fewer than 3 peers, only the best goes on
    assert pruned_at([0.55, 0.55, 0.55]) == 3  # the best of {0.5, 0.4, 0.55} after epoch 1, not of {0.6, 0.55}
    assert pruned_at([0.9, 0.1, 0.9, 0.9]) is None  # a poor epoch 2 is not judged


@pytest.mark.parametrize("direction, sign", [("maximize", 1), ("minimize", -1)])
def test_the_contenders_pruner_stops_the_bottom_third_after_epoch_1_and_keeps_the_top_third_later(direction, sign):
    # some trials under a Dice of 0.06 after epoch 1 end among the best (a high learning rate starts slowly):
    # only the bottom third stops there
    assert load_config("default").search.pruner == "contenders"  # the default
    study = optuna.create_study(direction=direction, pruner=make_pruner(load_config("default")))
    for first, later in ((0.5, 0.7), (0.4, 0.6), (0.3, 0.5)):  # fewer than 3 contenders before them: they go on
        assert replay(study, 15, [sign * first] * 2 + [sign * later] * 13) is None
    assert replay(study, 15, [sign * 0.25] * 15) == 1  # below the 3rd of 4 after epoch 1: 0.3
    assert prune_reason(study.pruner) == "outside the top two thirds among 3 contenders"
    # 3rd of 5 after epoch 1 goes on (the top two thirds: 4 of 5); 3rd of 4 after epoch 3 does not (2 of 4)
    assert replay(study, 15, [sign * 0.35, sign * 0.35] + [sign * 0.55] * 13) == 3
    assert prune_reason(study.pruner) == "outside the top third among 3 contenders"
    assert replay(study, 15, [sign * 0.45, sign * 0.45, sign * 0.8, sign * 0.8]) is None  # on at 1 and at 3


def test_the_contenders_pruner_names_any_share_in_its_reason():
    # benchmarks/pruning_replay.py tries other shares than a third and two thirds on the product's pruner
    pruner = make_pruner(load_config("default"))
    pruner.GOING_ON = {1: Fraction(1, 4)}
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for first in (0.5, 0.4, 0.3):
        replay(study, 15, [first] * 15)
    assert replay(study, 15, [0.45] * 15) == 1  # 2nd of 4: outside the top quarter (1 of 4)
    assert prune_reason(pruner) == "outside the top 1/4 among 3 contenders"


def test_the_contenders_pruner_judges_long_trials_again_after_epochs_6_and_12():
    # the yardsticks at a rung are the trials scheduled past the next one: past 12 after epoch 6, past 24
    # after epoch 12 (none in the default space, whose trials run at most 20 epochs: there they go on)
    study = optuna.create_study(direction="maximize", pruner=make_pruner(load_config("default")))
    for end in (0.8, 0.7, 0.6):
        assert replay(study, 30, [0.3] * 5 + [end] * 25) is None
    assert replay(study, 15, [0.3] * 5 + [0.65] * 10) == 6  # 3rd of 4 after epoch 6
    assert prune_reason(study.pruner) == "outside the top third among 3 contenders"
    # 2nd of 5 after epoch 6 (the 15-epoch trial counts there), 3rd of 4 after epoch 12 (it does not)
    assert replay(study, 30, [0.3] * 5 + [0.75] * 6 + [0.65] * 19) == 12


def test_a_trial_that_ends_before_the_next_rung_is_judged_but_never_a_yardstick():
    # its learning rate decays to zero over 3 epochs, so it looks better after epoch 1 than it will end
    study = optuna.create_study(direction="maximize", pruner=make_pruner(load_config("default")))
    for first in (0.5, 0.4, 0.3):
        replay(study, 15, [first] * 15)
    assert replay(study, 3, [0.9, 0.9, 0.9]) is None  # judged, and at the top
    assert replay(study, 3, [0.2, 0.2, 0.2]) == 1  # judged, and pruned
    assert replay(study, 15, [0.45] * 15) is None  # 2nd of the 4 long ones; 3rd had the short trials counted
