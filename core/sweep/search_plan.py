"""The step of a sweep that is a search's own: Optuna's TPE proposes each trial from the
results so far (through Ray Tune's public ``OptunaSearch``), into a study that lives
beside the sweep (``<results>/<run name>/optuna.db``) so that ``--resume`` adds samples
to it. Everything else is the runner's (:mod:`core.sweep.runner`); the report is
:mod:`core.sweep.search_report`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import optuna
from ray.tune.search.optuna import OptunaSearch

from core.metrics import reported_metrics, unknown_metric
from core.sweep.errors import SearchError
from core.sweep.halving import describe_halving, halving_scheduler
from core.sweep.preflight import SplitSizes
from core.sweep.request import SweepRequest
from core.sweep.resources import ResourceError, Resources, replan, resources_for
from core.sweep.search import PreparedSearch, describe, prepare_search, suggest
from core.sweep.state import STUDY_FILE, TUNE_DIR_NAME, SearchDetails, SweepState
from core.sweep.trainable import run_sample
from core.sweep.trials import Trial


def sample_id(number: int) -> str:
    """The trial id (Tune trial name, MLflow trial tag) of the study's trial ``number``:
    stable and unique across ``--resume``, which numbers on."""
    return f"sample-{number:03d}"


def study_url(run_dir: Path) -> str:
    return f"sqlite:///{run_dir / STUDY_FILE}"


@dataclass(frozen=True)
class SearchPlan:
    """A validated search: what is sampled, the base every sample starts from, how many
    samples this invocation runs and how each is placed."""

    prepared: PreparedSearch
    resources: Resources
    samples: int
    kind: str = "search"

    @property
    def file(self) -> Any:
        return self.prepared.file

    def checked_trials(self) -> list[Trial]:
        """What the preflight checks: the base at the largest sampled batch size."""
        return [self.prepared.largest()]

    def check_metric(self, sizes: Mapping[str, SplitSizes]) -> None:
        base = self.prepared.largest()
        size = sizes.get(base.trial_id)
        known = reported_metrics(base.config, has_validation=not size or size.val > 0)
        problem = unknown_metric(self.file.metric, known)
        if problem:
            raise SearchError(f"{self.file.source}: {problem}")

    def print_dry_run(
        self,
        request: SweepRequest,
        sizes: Mapping[str, SplitSizes],
        here: Mapping[str, float],
        stream: TextIO,
    ) -> None:
        """What a search would run: the sampled parameters, the base trial, ASHA's rungs,
        the resources, and the base config with ``--show-config``."""
        search, file = self.prepared, self.file
        base = search.largest()
        config, train = search.base.config, search.base.config.train
        width = max(len(name) for name in search.settings.params)
        lines = [
            f"search {file.ablation} ({file.source}): {self.samples} samples of "
            f"{config.method.name} by Optuna TPE ({search.settings.startup_trials} random "
            f"first), {file.mode} {file.metric}",
            "",
            "sampled parameters:",
            *(f"  {name:<{width}}  {describe(name, d)}" for name, d in search.settings.params.items()),
            *(f"  note: {note}" for note in search.notes),
            "",
            f"every sample: {config.frontend.name}/{config.model.encoder}, "
            f"{config.data.dataset} at {config.data.sample_rate} Hz (train/val/test "
            f"{sizes[base.trial_id].describe()}), {train.epochs} epochs, evaluated every "
            f"{train.eval_every}, batch {train.batch_size} unless sampled",
            self._scheduler_line(request),
            f"resources: {self.resources.describe()}",
        ]
        if not request.address:
            try:
                local = replan(self.resources, here)
                lines.append(f"  here: {local.max_concurrent_trials} sample(s) at once")
            except ResourceError as error:  # a cluster-sized preset looked at from a laptop
                lines.append(
                    f"note: not runnable on this machine ({here['CPU']:g} CPU, "
                    f"{here['GPU']:g} GPU): {error}"
                )
        lines.append(
            f"study: <results>/<run name>/{STUDY_FILE} (Optuna, SQLite); --resume RUN_NAME "
            f"adds --samples more to it"
        )
        if request.show_config:
            lines += ["", f"# base config of every sample ({search.base.trial_id})"]
            lines.append(config.to_yaml())
        print("\n".join(lines), file=stream, flush=True)

    def _scheduler_line(self, request: SweepRequest) -> str:
        if request.scheduler != "asha":
            return "scheduler: fifo (every sample runs its whole budget)"
        train = self.prepared.base.config.train
        return describe_halving(
            train.eval_every,
            train.epochs,
            self.file.metric,
            self.file.mode,
            self.prepared.settings.reduction_factor,
        )

    def run_name_stem(self, preset: str | None) -> str:
        method = self.prepared.base.config.method.name
        return f"{self.file.ablation}-{method}-{preset or 'base'}"

    def parent_tags(self) -> dict[str, str]:
        config = self.prepared.base.config
        return {
            "clarlab.dataset": config.data.dataset,
            "clarlab.method": config.method.name,
            "clarlab.search": "optuna-tpe",
        }

    def view_columns(self) -> list[str]:
        return list(self.prepared.settings.params)

    def details(self) -> SearchDetails:
        return SearchDetails(self.prepared.settings, self.prepared.base.config)

    def announce(self, resources: Resources) -> str:
        sampled = ", ".join(self.prepared.settings.params)
        method = self.prepared.base.config.method.name
        notes = "".join(f"\n  note: {note}" for note in self.prepared.notes)
        return f"{self.samples} samples of {method} over {sampled}; {resources.describe()}{notes}"


def prepare_search_plan(request: SweepRequest) -> SearchPlan:
    """The search file checked, the base composed, every sample's extremes validated."""
    prepared = prepare_search(request)
    samples = request.samples or prepared.settings.samples
    if samples < 1:
        raise SearchError(f"--samples must be >= 1, got {samples}")
    resources = resources_for(request, prepared.base.config.train)
    return SearchPlan(prepared, resources, samples)


class SampleSpace:
    """Optuna's define-by-run space: draws every parameter from its distribution and names
    the Tune trial after the study's trial number (a class, not a closure: Tune pickles
    the searcher)."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.params = dict(params)

    def __call__(self, trial: Any) -> dict[str, Any]:
        for name, distribution in self.params.items():
            suggest(trial, name, distribution)
        return {"cell": {"trial_id": sample_id(trial.number)}}


class Searcher(OptunaSearch):
    """``OptunaSearch`` for trials that report the metric at evaluation epochs only, and
    that a trial scheduler may stop early.

    A trial ASHA stopped is told to Optuna without a value, which ``OptunaSearch`` records
    as PRUNED (Optuna then keeps its last intermediate value, the one at its last rung):
    the best config is chosen among trials that ran the whole budget, and TPE ranks the
    stopped ones below the finished ones, as Optuna's own pruners do."""

    def __init__(self, *args: Any, full_budget: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.full_budget = full_budget

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.metric in result:
            super().on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        epochs = int((result or {}).get("training_iteration") or 0)
        stopped = (
            not error
            and result is not None
            and epochs < self.full_budget
            and not result.get("early_stopped")
        )
        if stopped:
            assert result is not None
            if self.metric in result:
                # Tune hands the result a trial scheduler stopped on to the scheduler only;
                # reported here, it is the pruned trial's last intermediate value.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # a step reported twice is only a warning
                    super().on_trial_result(trial_id, result)
            result = {key: value for key, value in result.items() if key != self.metric}
        super().on_trial_complete(trial_id, result, error)


def fail_stale(study: optuna.Study) -> list[int]:
    """Trials left RUNNING by an interrupted invocation are over: mark them FAIL, so the
    study's counts and plots say what happened (no other process samples this study)."""
    stale = [t.number for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    for number in stale:
        study.tell(number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
    return stale


def open_study(state: SweepState, run_dir: Path) -> optuna.Study:
    """The sweep's study, created on its first invocation (we hand it to ``OptunaSearch``
    by name and storage; it loads the same one)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        study_name=state.run_name,
        storage=study_url(run_dir),
        direction="minimize" if state.mode == "min" else "maximize",
        load_if_exists=True,
    )


def search_tune_run(
    state: SweepState, request: SweepRequest, run_dir: Path, samples: int, stream: TextIO
) -> dict[str, Any]:
    """The Tuner arguments of one search invocation (its own Tune experiment, ``tune``,
    ``tune-2`` ...); the invocation is recorded in the state first."""
    search = state.search
    assert search is not None
    study = open_study(state, run_dir)
    stale = fail_stale(study)
    if stale:
        print(f"  trials {stale} were interrupted earlier: marked failed", file=stream)
    settings, train = search.settings, search.base.train
    # The random start is seeded past the trials the study has, or a resumed search would
    # draw its first samples again.
    sampler = optuna.samplers.TPESampler(
        n_startup_trials=settings.startup_trials,
        seed=settings.seed + len(study.trials),
        constant_liar=True,  # concurrent trials do not all get the same suggestion
    )
    searcher = Searcher(
        SampleSpace(settings.params),
        metric=state.metric,
        mode=state.mode,
        sampler=sampler,
        study_name=state.run_name,
        storage=optuna.storages.RDBStorage(study_url(run_dir)),
        # The untrained control's method trains one epoch (core.train.epoch.TrialParts.epochs).
        full_budget=train.epochs if type(search.base.method).trains else 1,
    )
    scheduler = None
    if request.scheduler == "asha":  # each invocation's own (--scheduler; ASHA by default)
        reduction = settings.reduction_factor
        scheduler = halving_scheduler(
            metric=state.metric,
            mode=state.mode,
            eval_every=train.eval_every,
            epochs=train.epochs,
            reduction_factor=reduction,
        )
        shown = describe_halving(train.eval_every, train.epochs, state.metric, state.mode, reduction)
        print(f"  {shown}", file=stream, flush=True)
    number = len(search.invocations) + 1
    name = TUNE_DIR_NAME if number == 1 else f"{TUNE_DIR_NAME}-{number}"
    experiment_path = f"{state.storage_root}/{state.run_name}/{name}"
    search.invocations.append(
        {
            "experiment_path": experiment_path,
            "samples": samples,
            "scheduler": request.scheduler or "fifo",
            "started": time.time(),
        }
    )
    state.save(run_dir)
    constants = {
        "base": search.base.to_payload(),
        "identity": state.identity.to_dict(),
        "params": list(settings.params),
        "space_file": state.space_file,
    }
    return {
        "trainable": run_sample,
        "param_space": {"search": constants},
        "search_alg": searcher,
        "scheduler": scheduler,
        "num_samples": samples,
        "experiment_path": experiment_path,
        "total": samples,
    }
