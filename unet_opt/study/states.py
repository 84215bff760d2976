"""The words for a trial's state and why it ended, one vocabulary for the terminal, the study's note,
`report`, `studies` and the MLflow run names: complete, pruned, fail, interrupted, running, waiting.

Optuna has no state for a trial that a Ctrl-C or SIGTERM stopped: it is FAIL there, with the reason
`interrupted`, and "interrupted" everywhere a person reads it. Needs nothing but Optuna: `report` and
`studies` import it without MLflow or torch.
"""

from __future__ import annotations

from collections.abc import Iterable

from optuna.trial import FrozenTrial, TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # the trials that count towards --trials
INTERRUPTED = "interrupted"
DEAD_WORKER = "worker died (killed or crashed)"
SHOWN = ("complete", "pruned", "fail", INTERRUPTED, "running", "waiting")


def shown_state(trial: FrozenTrial) -> str:
    """One of SHOWN: Optuna's state in lower case, but "interrupted" for a FAIL whose reason says so."""
    if trial.state == TrialState.FAIL and trial.user_attrs.get("fail_reason") == INTERRUPTED:
        return INTERRUPTED
    return trial.state.name.lower()


def reason_of(trial: FrozenTrial) -> str:
    """Why a trial ended as it did: its stop or fail reason (a FAIL without one was a dead worker's)."""
    return (trial.user_attrs.get("stop_reason") or trial.user_attrs.get("fail_reason")
            or (DEAD_WORKER if trial.state == TrialState.FAIL else ""))


def count_states(trials: Iterable[FrozenTrial]) -> dict[str, int]:
    """Trials by shown state, every state of SHOWN present (zero or not), in that order."""
    counts = dict.fromkeys(SHOWN, 0)
    for trial in trials:
        counts[shown_state(trial)] += 1
    return counts


def describe_counts(counts: dict[str, int]) -> str:
    """"8 complete, 21 pruned, 1 interrupted": complete and pruned always, the others when there are any."""
    return ", ".join(f"{n} {state}" for state, n in counts.items() if n or state in ("complete", "pruned"))


def epochs_reported(trial: FrozenTrial) -> tuple[int, int]:
    """(best epoch, epochs run) of a trial from the values it reported to Optuna, its best so far after each
    epoch: what a trial stopped or killed mid-epoch, or still running, had trained."""
    values = trial.intermediate_values
    if not values:
        return 0, 0
    last = max(values)
    return min(epoch for epoch, value in values.items() if value == values[last]), last
