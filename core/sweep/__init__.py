"""Sweeps: a space file -> a plan (a grid's trials or a search's samples) -> one Ray
session -> one Tuner -> results -> one MLflow parent run.

The only package of ``core`` that imports Ray Tune or reads space files. One engine
(:mod:`~core.sweep.runner`) runs both kinds; the modules that hold what only one kind
needs say so in their names:

- shared: :mod:`~core.sweep.request` (what is asked), :mod:`~core.sweep.spacefile` (the
  parts of a space file both kinds have), :mod:`~core.sweep.trials`,
  :mod:`~core.sweep.preflight` (each trial's data, checked before Ray),
  :mod:`~core.sweep.resources`, :mod:`~core.sweep.disk`, :mod:`~core.sweep.session` (Ray
  and the tracking server), :mod:`~core.sweep.trainable` (what Tune runs),
  :mod:`~core.sweep.halving` (ASHA), :mod:`~core.sweep.progress`,
  :mod:`~core.sweep.state` (``sweep.json``), :mod:`~core.sweep.trust`,
  :mod:`~core.sweep.results` (Tune's results by name), :mod:`~core.sweep.outcome`;
- a grid's: :mod:`~core.sweep.grid` (axes, cells), :mod:`~core.sweep.design` (controls,
  seeds), :mod:`~core.sweep.table_spec`, :mod:`~core.sweep.dryrun`,
  :mod:`~core.sweep.grid_plan`;
- a search's: :mod:`~core.sweep.search` (Optuna distributions), :mod:`~core.sweep.search_plan`
  (the searcher and its study), :mod:`~core.sweep.search_report`.
"""

from __future__ import annotations

from core.lazy import lazy_attributes

# Imported on first use, so that reading a space file does not load Ray Tune and MLflow:
# the driver validates a grid before it needs either.
_EXPORTS = {
    "SweepRequest": "core.sweep.request",
    "run_sweep": "core.sweep.runner",
    "init_ray": "core.sweep.session",
    "reachable_tracking_uri": "core.sweep.session",
    "prepare_grid": "core.sweep.grid_plan",
    "prepare_search_plan": "core.sweep.search_plan",
    "trial_table": "core.sweep.dryrun",
    "PreflightError": "core.sweep.preflight",
    "SplitSizes": "core.sweep.preflight",
    "check_trials": "core.sweep.preflight",
    "ResourceError": "core.sweep.resources",
    "Resources": "core.sweep.resources",
    "plan_resources": "core.sweep.resources",
    "SweepOutcome": "core.sweep.outcome",
    "collect_records": "core.sweep.results",
    "SweepError": "core.sweep.errors",
    "GridError": "core.sweep.errors",
    "SearchError": "core.sweep.errors",
    "Axis": "core.sweep.grid",
    "GridSpace": "core.sweep.grid",
    "load_grid": "core.sweep.grid",
    "restrict_axes": "core.sweep.grid",
    "expand_trials": "core.sweep.design",
    "Trial": "core.sweep.trials",
    "SWEEP_FILE": "core.sweep.state",
    "SweepState": "core.sweep.state",
    "find_sweep": "core.sweep.state",
    "TRIAL_ENV": "core.sweep.trainable",
    "run_trial": "core.sweep.trainable",
    "trial_environment": "core.sweep.trainable",
}


__getattr__ = lazy_attributes("core.sweep", _EXPORTS)

__all__ = sorted(_EXPORTS)
