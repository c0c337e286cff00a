"""A quiet progress line for the terminal instead of Tune's tables."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ray import tune

from core.sweep.results import error_summary, trial_name


class SweepProgress(tune.Callback):
    """A quiet replacement for Tune's tables: one line per finished or failed trial and a
    status line (done / running / pending, best so far) at most every ``every_s`` seconds.

    It prints to ``sys.stdout`` at call time rather than holding a stream, because Tune
    pickles its callbacks into the experiment state that ``--resume`` restores. A restored
    callback is the one pickled when the sweep started, so each run of the experiment
    starts its clock again and takes the best so far from every trial Tune restored
    (trials that finished before an interruption report nothing more).
    """

    def __init__(self, total: int, metric: str, every_s: float = 30.0, mode: str = "max") -> None:
        self.total = total
        self.metric = metric
        self.mode = mode  # "min": the lowest value is the best so far
        self.every_s = every_s
        self.best: tuple[float, str] | None = None
        self.last_print = 0.0
        self.started = time.time()
        self.seeded = False

    def setup(self, **info: Any) -> None:
        """Called by Tune at the start of every run of the experiment, a restored one too."""
        self.started = time.time()
        self.seeded = False

    def _seed(self, trials: Sequence[Any]) -> None:
        """The best so far over the trials Tune holds already (finished before a resume)."""
        for trial in trials:
            self._consider((trial.last_result or {}).get(self.metric), trial)
        self.seeded = True

    def _consider(self, value: Any, trial: Any) -> None:
        if value is None:
            return
        better = self.best is None or (
            value < self.best[0] if getattr(self, "mode", "max") == "min" else value > self.best[0]
        )
        if better:
            self.best = (float(value), trial_name(trial))

    def status_line(self, trials: Sequence[Any]) -> str:
        done = sum(trial.status == "TERMINATED" for trial in trials)
        failed = sum(trial.status == "ERROR" for trial in trials)
        running = sum(trial.status == "RUNNING" for trial in trials)
        pending = self.total - done - failed - running
        best = f"; best {self.metric} {self.best[0]:.4f} ({self.best[1]})" if self.best else ""
        minutes = (time.time() - self.started) / 60
        return (
            f"[{minutes:5.1f} min] {done + failed}/{self.total} done ({failed} failed), "
            f"{running} running, {pending} pending{best}"
        )

    def _say(self, text: str) -> None:
        print(text, flush=True)
        self.last_print = time.time()

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        self._consider(result.get(self.metric), trial)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        value = (trial.last_result or {}).get(self.metric)
        shown = f"{self.metric}={value:.4f}" if value is not None else f"no {self.metric}"
        self._say(f"  finished {trial_name(trial)}: {shown}")
        self._say(self.status_line(trials))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """One line with the cause; the traceback stays in Tune's error file (named here)
        and in the trial's MLflow run, not in the terminal (see ``quiet_trial_errors``)."""
        where = ""
        if trial.error_file:  # Tune's staging copy now; named where it ends up (trial.path)
            kept = f"{trial.path}/{Path(trial.error_file).name}" if trial.path else trial.error_file
            where = f" (traceback: {kept})"
        self._say(f"  FAILED   {trial_name(trial)}: {error_summary(trial.error_file)}{where}")
        self._say(self.status_line(trials))

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if not getattr(self, "seeded", False):  # a callback pickled by an older version lacks it
            self._seed(trials)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if time.time() - self.last_print >= self.every_s:
            self._say(self.status_line(trials))
