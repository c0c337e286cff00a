"""bench/asha.py: its ASHA rule is Ray's, its replay decides as the project's scheduler
would, and its report finds the best cells that halving would have stopped.

No Ray cluster and no training: Ray's ``_Bracket`` and the project's ``ExemptingHalving``
are called directly, and the runs are result.json files written here with known curves
and epoch seconds, so every expected figure below is worked out by hand."""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench import asha

METRIC = "test_top1"

# The synthetic grid: 4 cells x 2 seeds + a supervised control, 4 epochs, evaluated every
# 2 (rungs: epoch 2). trial: (cell, role, seconds per epoch, score at epoch 2, at epoch 4)
GRID = {
    "g-A-seed0": ("g-A", "cell", 1.0, 0.5, 0.5),
    "g-A-seed1": ("g-A", "cell", 1.25, 0.6, 0.6),
    "g-B-seed0": ("g-B", "cell", 1.0, 0.7, 0.7),
    "g-B-seed1": ("g-B", "cell", 1.0, 0.8, 0.01),  # worst at the last epoch: never a stop there
    "g-C-seed0": ("g-C", "cell", 1.0, 0.2, 0.2),
    "g-C-seed1": ("g-C", "cell", 1.0, 0.3, 0.3),
    "g-D-seed0": ("g-D", "cell", 1.0, 0.9, 0.9),
    "g-D-seed1": ("g-D", "cell", 1.0, 0.1, 0.85),  # a best cell with a slow-starting seed
    "g-supervised-seed0": ("g-supervised", "supervised", 1.0, 0.05, 0.05),  # exempt
}
# Two slots, all trials to the end: A0 0-4, A1 0-5, B0 4-8, B1 5-9, C0 8-12, C1 9-13,
# D0 12-16, D1 13-17, control 16-20 (a 20 s grid).
FULL_STARTS = dict(zip(GRID, [0, 0, 4, 5, 8, 9, 12, 13, 16], strict=True))
# The ASHA replay: C0 stops at its rung at 10 s (0.2 < median(.5 .6 .7 .8) = .65), C1 at
# 11 s (0.3 < .6), D0 goes on (0.9), D1 stops at 13 s (0.1 < .6); the control runs 13-17.
REPLAY_STOPS = {"g-C-seed0": (10.0, 0.65), "g-C-seed1": (11.0, 0.6), "g-D-seed1": (13.0, 0.6)}
T0 = 1_800_000_000.0


def write_run(
    run: Path,
    starts: dict[str, float],
    epochs: dict[str, int],
    scheduler: str | None,
    interrupted: tuple[str, ...] = (),
) -> Path:
    """A results folder: sweep.json, tune/<trial>/result.json (the trials in ``starts``,
    each for its ``epochs``, 4 by default; one short of 4 was stopped by the scheduler
    unless ``interrupted``) and report/aug_matrix_cells.csv (A and D the best cells)."""
    grid = [
        {
            "trial_id": trial,
            "cell_id": cell,
            "role": role,
            "config": {"train": {"epochs": 4, "eval_every": 2}, "method": {"name": role}},
        }
        for trial, (cell, role, *_) in GRID.items()
    ]
    run.mkdir()
    sweep = {"scheduler": scheduler, "metric": METRIC, "mode": "max", "grid": {"trials": grid}}
    (run / "sweep.json").write_text(json.dumps(sweep))
    for trial, start in starts.items():
        _, _, seconds, *scores = GRID[trial]
        rows, end = [], T0 + start
        for epoch in range(1, epochs.get(trial, 4) + 1):
            end += seconds
            row = {"training_iteration": epoch, "time_this_iter_s": seconds, "timestamp": end}
            if epoch % 2 == 0:
                row[METRIC] = scores[epoch // 2 - 1]
            rows.append(row | {"config": {"cell": {"trial_id": trial}}})
        rows[-1]["done"] = len(rows) < 4 and trial not in interrupted  # a scheduler's stop
        (run / "tune" / trial).mkdir(parents=True)
        (run / "tune" / trial / "result.json").write_text(
            "".join(json.dumps(r) + "\n" for r in rows)
        )
    (run / "report").mkdir()
    header = "panel,cell,role,first,second,seeds,mean,within_noise_of_best\n"
    best = {"g-A": "True", "g-B": "False", "g-C": "False", "g-D": "True"}
    lines = [f"g,{cell},cell,x,y,2,0.5,{flag}\n" for cell, flag in best.items()]
    (run / "report" / "aug_matrix_cells.csv").write_text(
        header + "".join(lines) + "g,g-supervised,supervised,,,1,0.9,\n"
    )
    return run


@pytest.fixture
def full_run(tmp_path: Path) -> Path:
    return write_run(tmp_path / "full", FULL_STARTS, {}, "fifo")


def last_json(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_bracket_decides_as_rays(recwarn: pytest.WarningsRecorder) -> None:
    """Random arrival orders (ties, NaN rewards, results that skip a rung, reduction
    factors 2, 3 and 1.5): every decision is Ray's ``_Bracket``'s for the same order.
    (``recwarn`` takes numpy's warnings on all-NaN rungs, which both sides raise.)"""
    from ray.tune.schedulers.async_hyperband import _Bracket

    rng, decisions = random.Random(0), []
    for case in range(300):
        rf = (2, 3, 1.5)[case % 3]
        grace, max_t = rng.choice([(1, 8), (2, 20), (5, 20), (5, 40), (3, 30)])
        ray, ours = _Bracket(grace, max_t, rf, 0), asha.Bracket(grace, max_t, rf)
        assert [m for m, _ in ours.rungs] == [m for m, _ in ray._rungs]
        epoch = dict.fromkeys([f"t{i}" for i in range(rng.randint(1, 12))], 0)
        while epoch:
            trial = rng.choice(sorted(epoch))
            epoch[trial] += rng.choice([grace, grace, 1, 2 * grace])
            reward = math.nan if rng.random() < 0.05 else round(rng.random(), 1)
            expected = ray.on_result(SimpleNamespace(trial_id=trial), epoch[trial], reward)
            stop, _, _ = ours.on_result(trial, epoch[trial], reward)
            assert stop == (expected == "STOP"), (case, trial, epoch[trial], reward)
            decisions.append(stop)
            if stop or epoch[trial] >= max_t:
                del epoch[trial]
    assert 0.1 < sum(decisions) / len(decisions) < 0.9  # both kinds, many times


def random_plan(rng: random.Random) -> asha.Plan:
    """12 cells x 2 seeds and 2 controls, 20 epochs scored every 5, epoch seconds in
    eighths (exact sums: the arrival order rebuilt below is the replay's own)."""
    trials = []
    for cell, seed in itertools.product([*range(12), "untrained", "supervised"], range(2)):
        if cell == "untrained" and seed:
            continue
        epochs = 1 if cell == "untrained" else 20
        seconds = [rng.randint(40, 120) / 8 for _ in range(epochs)]
        scores = {e: round(rng.random(), 2) for e in range(5, epochs + 1, 5)} or {1: 0.0}
        trials.append(
            asha.TrialRun(f"c{cell}-seed{seed}", f"c{cell}", isinstance(cell, str), epochs)
        )
        trials[-1].seconds, trials[-1].scores, trials[-1].ending = seconds, scores, "end"
    return asha.Plan(METRIC, "max", "fifo", 5, 20, trials)


@pytest.mark.parametrize("seed", range(3))
def test_replay_decides_as_the_projects_scheduler(seed: int) -> None:
    """The project's ExemptingHalving (Ray's ASHAScheduler inside), fed every result of the
    replay in the replay's time order, stops exactly the trials the replay stops, where
    it stops them."""
    from ray.tune.schedulers import TrialScheduler

    from core.sweep.halving import halving_scheduler

    plan = random_plan(random.Random(seed))
    outcomes = asha.replay(plan, slots=2, rf=2)
    exempt = [t.trial_id for t in plan.trials if t.control]
    scheduler = halving_scheduler(metric=METRIC, mode="max", eval_every=5, epochs=20, exempt=exempt)
    tune = {
        t.trial_id: SimpleNamespace(trial_id=t.trial_id, config={"cell": {"trial_id": t.trial_id}})
        for t in plan.trials
    }
    for trial in tune.values():
        scheduler.on_trial_add(None, trial)
    arrivals = []
    for i, trial in enumerate(plan.trials):
        out = outcomes[trial.trial_id]
        ends = itertools.accumulate(
            trial.seconds[: out.epoch], initial=out.time - sum(trial.seconds[: out.epoch])
        )
        arrivals += [(time, i, epoch) for epoch, time in enumerate(ends) if epoch]
    stops = 0
    for _, i, epoch in sorted(arrivals):
        trial, out = plan.trials[i], outcomes[plan.trials[i].trial_id]
        result = {"training_iteration": epoch} | (
            {METRIC: trial.scores[epoch]} if epoch in trial.scores else {}
        )
        decision = scheduler.on_trial_result(None, tune[trial.trial_id], result)
        stops += decision == TrialScheduler.STOP
        assert (decision == TrialScheduler.STOP) == (out.stopped is not None and epoch == out.epoch)
        if epoch == trial.reached:
            scheduler.on_trial_complete(None, tune[trial.trial_id], result)
    assert stops == sum(o.stopped is not None for o in outcomes.values()) > 0
    for trial in plan.trials:  # controls run to their end; no trial stops at its last epoch
        out = outcomes[trial.trial_id]
        assert out.epoch < trial.reached if out.stopped else out.epoch == trial.reached
        assert not (trial.control and out.stopped)


def test_replay_on_a_synthetic_grid(full_run: Path) -> None:
    """Makespan, the trials it stops (where, when, against which cutoff) and the cells it
    keeps, worked out by hand (see GRID); never a control, never a last epoch."""
    plan = asha.load_plan(full_run)
    outcomes = asha.replay(plan, slots=2, rf=2)
    assert max(o.time for o in outcomes.values()) == 17.0
    stopped = {t: o for t, o in outcomes.items() if o.stopped}
    assert {t: o.time for t, o in stopped.items()} == {t: s[0] for t, s in REPLAY_STOPS.items()}
    for trial, (_, cutoff) in REPLAY_STOPS.items():
        assert stopped[trial].epoch == 2
        assert stopped[trial].stopped.endswith(f"< cutoff {cutoff:.4f}")
    assert outcomes["g-B-seed1"] == asha.Outcome(4, 9.0)  # lowest of all at its last epoch
    assert outcomes["g-supervised-seed0"] == asha.Outcome(4, 17.0)  # lowest of all at the rung
    kept, lost = plan.verdict(["g-A", "g-D"], {t: o.stopped for t, o in stopped.items()})
    assert kept == {"g-A", "g-B"}
    assert lost == [f"g-D: g-D-seed1 {stopped['g-D-seed1'].stopped}"]
    fifo = asha.replay(plan, slots=2, rf=2, halving=False)
    assert max(o.time for o in fifo.values()) == 20.0 and not any(o.stopped for o in fifo.values())
    # the same run minimised instead: the same trials stop at the same cutoffs
    for trial in plan.trials:
        trial.scores = {e: -v for e, v in trial.scores.items()}
    plan.mode = "min"
    assert {t for t, o in asha.replay(plan, slots=2, rf=2).items() if o.stopped} == set(
        REPLAY_STOPS
    )


def test_controls_do_not_move_the_cutoffs() -> None:
    """A control ahead of the cells, far better than them, is neither judged nor counted:
    the second cell trial is compared with the first alone (and goes on)."""

    def trial(name: str, score: float, control: bool = False) -> asha.TrialRun:
        return asha.TrialRun(name, name, control, 4, [1.0] * 4, {2: score, 4: score}, ending="end")

    plan = asha.Plan(
        METRIC, "max", None, 2, 4, [trial("u", 0.99, True), trial("a", 0.5), trial("b", 0.6)]
    )
    assert not any(o.stopped for o in asha.replay(plan, slots=1, rf=2).values())
    plan.trials[0].control = False  # the same trial judged: now "a" falls below it
    assert asha.replay(plan, slots=1, rf=2)["a"].stopped is not None


def test_wall_is_the_union_of_busy_spans() -> None:
    """Overlapping trials count once, and a pause (a run interrupted, then resumed) in or
    between trials does not count at all."""
    assert asha.union_seconds([(0, 10), (5, 15), (15, 20), (100, 110)]) == 30
    rows = [
        {"training_iteration": k, "time_this_iter_s": 10.0, "timestamp": t}
        for k, t in [(1, 10), (2, 20), (3, 1030), (4, 1040)]  # resumed after 1000 s
    ]
    assert asha.busy_spans(rows) == [(0.0, 20.0), (1020.0, 1040.0)]
    assert asha.union_seconds(asha.busy_spans(rows) + [(15.0, 30.0)]) == 50


def test_read_rows_keeps_the_later_repeat_and_skips_a_torn_line(tmp_path: Path) -> None:
    """A resumed trial reports the epochs after its checkpoint again: the later rows are
    the run that went on. A line torn by a kill mid-write is not a row."""
    rows = [(1, 10), (2, 20), (3, 30), (3, 1030), (4, 1040)]  # epoch 3 reported again
    text = "".join(json.dumps({"training_iteration": k, "timestamp": t}) + "\n" for k, t in rows)
    (tmp_path / "result.json").write_text(text + '{"training_iteration": 5, "tim')
    read = asha.read_rows(tmp_path / "result.json")
    assert [(r["training_iteration"], r["timestamp"]) for r in read] == [
        (1, 10),
        (2, 20),
        (3, 1030),
        (4, 1040),
    ]


def test_report_against_a_real_asha_run(
    full_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The headline figures: the replay stops best cell D (its seed 1 at the rung); the
    real ASHA run (C stopped, D kept, a 1000 s interruption before its last trial) keeps
    every best cell and agrees with the replay on 8 of 9 trials (not on D1)."""
    starts = FULL_STARTS | {"g-C-seed0": 8, "g-C-seed1": 9, "g-D-seed0": 10, "g-D-seed1": 11}
    starts["g-supervised-seed0"] = 14 + 1000
    real = write_run(tmp_path / "asha", starts, {"g-C-seed0": 2, "g-C-seed1": 2}, "asha")
    assert asha.main([str(full_run), "--asha", str(real)]) == 0
    figures = last_json(capsys)
    assert figures["full_wall_min"] == round(20 / 60, 2)
    assert figures["fifo_replay_wall_min"] == round(20 / 60, 2)
    assert figures["replay_wall_min"] == round(17 / 60, 2)
    assert figures["replay_speedup"] == round(20 / 17, 3)
    assert sorted(figures["best_cells"]) == ["g-A", "g-D"]
    assert figures["best_cells_kept_by_replay"] is False
    assert figures["best_cells_stopped_by_replay"] == [
        "g-D: g-D-seed1 stopped at rung 2: 0.1000 < cutoff 0.6000"
    ]
    assert figures["asha_wall_min"] == round(19 / 60, 2)  # 0-15 s, then 1014-1018 s
    assert figures["asha_speedup"] == round(20 / 19, 3)
    assert figures["best_cells_kept_by_asha"] is True
    assert figures["best_cells_stopped_by_asha"] == []
    assert (figures["decisions_agreeing"], figures["decisions_compared"]) == (8, 9)


def test_a_run_that_is_not_full_is_refused_with_its_reasons(tmp_path: Path) -> None:
    """An ASHA run, or a fifo run with a trial cut off and one never started, is no
    reference: the message names the scheduler and the trials short of their budget."""
    real = write_run(tmp_path / "asha", FULL_STARTS, {"g-C-seed0": 2, "g-C-seed1": 2}, "asha")
    with pytest.raises(SystemExit) as refused:
        asha.main([str(real)])
    assert "sweep.json says --scheduler asha" in str(refused.value)
    assert "2 trial(s) stopped: g-C-seed0 (2/4), g-C-seed1 (2/4)" in str(refused.value)
    starts = {t: s for t, s in FULL_STARTS.items() if t != "g-supervised-seed0"}
    cut = write_run(tmp_path / "cut", starts, {"g-D-seed1": 3}, None, ("g-D-seed1",))
    with pytest.raises(SystemExit) as refused:
        asha.main([str(cut)])
    assert "sweep.json says" not in str(refused.value)
    assert "1 trial(s) interrupted: g-D-seed1 (3/4)" in str(refused.value)
    assert "1 trial(s) not run: g-supervised-seed0 (0/4)" in str(refused.value)


def test_every_setting_the_run_allows_is_replayed_with_its_verdict(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--settings``: first rungs 5, 10, 15 (the run scored every 5 of 20 epochs) at
    reduction factors 2, 3, 4; each stops trials only at its own rungs, and its verdict is
    the replay's own. A first rung the run has no scores for is refused."""
    plan = random_plan(random.Random(3))
    best = ["c0", "c1"]
    rows = asha.settings(plan, best, slots=2)
    assert [(r["grace"], r["rf"]) for r in rows] == list(itertools.product((5, 10, 15), (2, 3, 4)))
    by = {(r["grace"], r["rf"]): r for r in rows}
    assert by[(5, 2)]["rungs"] == [5, 10] and by[(5, 3)]["rungs"] == [5, 15]
    assert by[(5, 4)]["rungs"] == [5] and by[(10, 2)]["rungs"] == [10]
    fifo = max(o.time for o in asha.replay(plan, slots=2, rf=2, halving=False).values())
    for (grace, rf), row in by.items():
        outcomes = asha.replay(plan, slots=2, rf=rf, grace=grace)
        assert {o.epoch for o in outcomes.values() if o.stopped} <= set(row["rungs"])
        assert row["stopped"] == sum(o.stopped is not None for o in outcomes.values())
        _, cut = plan.verdict(best, {t: o.stopped for t, o in outcomes.items() if o.stopped})
        assert row["best_cells_kept"] == (not cut)
        assert row["wall_min"] <= round(fifo / 60, 2)
    assert "grace  rf  rungs" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="scored every 5 epochs only"):
        asha.replay(plan, slots=2, rf=2, grace=7)
