"""Successive halving (ASHA) for grids and searches, through Ray's public API.

ASHA compares trials at *rungs* (evaluation epochs ``eval_every``, 2x, 4x ... that) and
stops those below the best ``1/reduction_factor`` of the trials that reached the rung. A
clarlab sweep needs two exceptions that Ray's ``ASHAScheduler`` does not offer, so
:class:`ExemptingHalving` wraps one (a custom ``TrialScheduler``, Tune's extension point)
and forwards to it only what it should see:

- trials named in ``exempt`` (a grid's untrained control and supervised reference) are
  never compared or stopped: they are the reference points of every cell, at the full
  budget, and their scores would move the cells' cutoffs;
- a trial's last epoch is never a stop: it ends by itself, and a stop there would
  interrupt its final report instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from core.cells import CELL
from core.sweep.errors import GridError
from core.sweep.trials import Trial

TIME_ATTR = "training_iteration"  # Tune's count of reports: one per epoch


def halving_rungs(eval_every: int, epochs: int, reduction_factor: float = 2) -> list[int]:
    """The epochs at which ASHA compares trials: ``eval_every`` x ``reduction_factor``**k
    before the last epoch (every one an evaluation epoch, so the metric is there)."""
    rungs, rung = [], float(eval_every)
    while rung < epochs:
        rungs.append(int(rung))
        rung *= reduction_factor
    return rungs


def describe_halving(
    eval_every: int, epochs: int, metric: str, mode: str, reduction_factor: float = 2
) -> str:
    """One line on what ASHA will do with these budgets (for dry runs and the driver)."""
    rungs = halving_rungs(eval_every, epochs, reduction_factor)
    if not rungs:
        return (
            f"ASHA: nothing to halve (train.eval_every={eval_every} >= train.epochs={epochs}: "
            f"the first comparison would be at the last epoch); every trial runs to the end. "
            f"Evaluate more often (--set train.eval_every=...) or train longer"
        )
    kept = "the median" if reduction_factor == 2 else f"the best 1/{reduction_factor:g}"
    worse = "higher" if mode == "min" else "lower"
    return (
        f"ASHA on {metric} ({mode}): at epochs {', '.join(map(str, rungs))} of {epochs}, a "
        f"trial {worse} than {kept} of the trials that reached that epoch stops"
    )


class ExemptingHalving(FIFOScheduler):
    """An ``ASHAScheduler`` that never sees the exempt trials nor a last epoch (see the
    module docstring). FIFO order for choosing the next trial, as ASHA itself."""

    def __init__(self, halving: ASHAScheduler, *, max_t: int, exempt: Sequence[str] = ()):
        super().__init__()
        self.halving = halving
        self.max_t = max_t
        self.exempt = frozenset(exempt)
        self.compared: set[str] = set()  # Tune ids of the trials the halving sees

    @property
    def metric(self) -> str | None:
        return self.halving.metric

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return self.halving.set_search_properties(metric, mode, **spec)

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        cell = (getattr(trial, "config", None) or {}).get("cell") or {}
        if cell.get("trial_id") not in self.exempt:
            self.compared.add(trial.trial_id)
            self.halving.on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if trial.trial_id not in self.compared or result.get(TIME_ATTR, 0) >= self.max_t:
            return TrialScheduler.CONTINUE
        return self.halving.on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        if trial.trial_id in self.compared:
            self.halving.on_trial_complete(tune_controller, trial, result)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        if trial.trial_id in self.compared:
            self.halving.on_trial_error(tune_controller, trial)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        if trial.trial_id in self.compared:
            self.halving.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return self.halving.debug_string()


def halving_scheduler(
    *,
    metric: str,
    mode: str,
    eval_every: int,
    epochs: int,
    reduction_factor: float = 2,
    exempt: Sequence[str] = (),
) -> ExemptingHalving | None:
    """ASHA with rungs on evaluation epochs (grace period ``eval_every``), or None when
    the budget leaves nothing to halve."""
    if not halving_rungs(eval_every, epochs, reduction_factor):
        return None
    halving = ASHAScheduler(
        time_attr=TIME_ATTR,
        metric=metric,
        mode=mode,
        max_t=epochs,
        grace_period=eval_every,
        reduction_factor=reduction_factor,
    )
    return ExemptingHalving(halving, max_t=epochs, exempt=exempt)


def check_halving(trials: Sequence[Trial]) -> tuple[int, int]:
    """(eval_every, epochs) shared by a grid's cells; ASHA's rungs must be evaluation
    epochs of every cell, so cells that differ in either cannot be halved together."""
    cells = [trial for trial in trials if trial.role == CELL] or list(trials)
    budgets = {(t.config.train.eval_every, t.config.train.epochs) for t in cells}
    if len(budgets) > 1:
        shown = ", ".join(f"eval_every={e} epochs={n}" for e, n in sorted(budgets))
        raise GridError(
            f"--scheduler asha compares cells at the same evaluation epochs, but the cells "
            f"differ ({shown}); give them one train.epochs and train.eval_every, or use "
            f"--scheduler fifo"
        )
    return next(iter(budgets))
