"""Would ASHA have kept a grid's best cells, and how much sooner would the grid have ended?

``--scheduler asha`` stops a trial scoring below the median at a rung: worth it only if it
never stops a cell the full grid finds best or within noise of it. This replays a FULL
(``--scheduler fifo``) run's epoch seconds and scores as the project runs ASHA: grid order,
``--slots`` at a time, :class:`Bracket` (Ray's ``_Bracket``) judging each result in time
order, controls and last epochs exempt (core/sweep/halving.py). ``--asha`` adds a real run.
Wall time: the union of the trials' busy spans (not interruptions). Last line: one JSON.

    python bench/asha.py results/<full run> [--asha results/<asha run>] [--slots 2] [--settings]
"""

import argparse
import csv
import heapq
import json
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

ENDS = ("end", "self-stopped")  # a trial that ran its whole budget (or stopped itself early)


@dataclass
class TrialRun:
    """One trial as a run recorded it (as the grid planned it, when it never ran)."""

    trial_id: str
    cell: str
    control: bool  # exempt from halving (untrained control, supervised reference)
    budget: int  # epochs it reports when it runs to the end
    seconds: list[float] = field(default_factory=list)  # time_this_iter_s of epochs 1..n
    scores: dict[int, float] = field(default_factory=dict)  # metric on evaluation epochs
    spans: list[tuple[float, float]] = field(default_factory=list)  # busy (start, end)
    ending: str = "not run"  # end | stopped | self-stopped | interrupted | not run

    @property
    def reached(self) -> int:
        return len(self.seconds)


@dataclass
class Plan:
    """A grid sweep: metric, direction, scheduler, the cells' budget, trials in start order."""

    metric: str
    mode: str
    scheduler: str | None
    eval_every: int
    epochs: int
    trials: list[TrialRun]

    def wall(self) -> float:
        """Measured wall seconds: the union of the trials' busy spans."""
        return union_seconds([span for t in self.trials for span in t.spans])

    def shortfalls(self) -> dict[str, str]:
        """Why each trial that did not run to its end ended where it did."""
        ends = {t.trial_id: (t.ending, t.reached) for t in self.trials if t.ending not in ENDS}
        return {i: f"{end}: at epoch {n}" if n else end for i, (end, n) in ends.items()}

    def verdict(self, best: list[str], short: dict[str, str]) -> tuple[set[str], list[str]]:
        """(cells whose every seed ran to the end, why each seed of a best cell fell short)."""
        cells: dict[str, list[str]] = {}
        for t in [t for t in self.trials if not t.control]:
            cells.setdefault(t.cell, []).append(t.trial_id)
        kept = {cell for cell, ids in cells.items() if not any(i in short for i in ids)}
        seeds = [(c, i) for c in best if c not in kept for i in cells.get(c, []) if i in short]
        return kept, [f"{c}: {i} {short[i]}" for c, i in seeds]


class Outcome(NamedTuple):
    """Where the replay ended a trial, and why if it stopped it."""

    epoch: int
    time: float
    stopped: str | None = None  # "stopped at rung 5: 0.4033 < cutoff 0.4300"


class Bracket:
    """Ray's ``_Bracket``: rungs ``grace * rf**k`` up to max_t; a result goes to the highest
    rung at or below its epoch that the trial has not reached, is judged against the
    ``(1 - 1/rf)`` percentile of the (signed: higher is better) rewards recorded there."""

    def __init__(self, grace: int, max_t: int, rf: float) -> None:
        count = int(np.log(max_t / grace) / np.log(rf) + 1)
        self.rf = rf
        self.rungs = [(grace * rf**k, dict[str, float]()) for k in reversed(range(count))]

    def on_result(self, trial: str, epoch: int, reward: float) -> tuple[bool, float | None, Any]:
        """(stop, rung, cutoff) for one scored result."""
        for milestone, recorded in self.rungs:
            if epoch < milestone or trial in recorded:
                continue
            values = list(recorded.values())
            cutoff = np.nanpercentile(values, (1 - 1 / self.rf) * 100) if values else None
            recorded[trial] = reward
            return cutoff is not None and reward < cutoff, milestone, cutoff
        return False, None, None


def read_rows(path: Path) -> list[dict]:
    """A result.json's rows by epoch; a resumed trial's repeated epochs: the later row."""
    rows: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "training_iteration" in row:
            rows[int(row["training_iteration"])] = row
    return [rows[k] for k in sorted(rows)]


def busy_spans(rows: list[dict], pause_s: float = 5.0) -> list[tuple[float, float]]:
    """Epoch k is busy over [timestamp - time_this_iter_s, timestamp]; epochs join unless
    more than ``pause_s`` (timestamps are whole seconds) lies between: an interruption."""
    spans: list[tuple[float, float]] = []
    for row in rows:
        end = float(row["timestamp"])
        start = end - float(row["time_this_iter_s"])
        if spans and start <= spans[-1][1] + pause_s:
            spans[-1] = (spans[-1][0], max(spans[-1][1], end))
        else:
            spans.append((start, end))
    return spans


def union_seconds(spans: list[tuple[float, float]]) -> float:
    """Measure of a union of intervals: wall time with the idle gaps left out."""
    total, reach = 0.0, -math.inf
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def ending(rows: list[dict], budget: int) -> str:
    """Why rows end short of the budget: Tune marks a scheduler's stop ``done``, the loop's
    own early stopping sets ``early_stopped``; anything else was cut off (interrupted)."""
    last = rows[-1] if rows else {}
    if not rows or int(last["training_iteration"]) >= budget:
        return "end" if rows else "not run"
    short = "stopped" if last.get("done") else "interrupted"
    return "self-stopped" if last.get("early_stopped") else short


def load_plan(run_dir: Path) -> Plan:
    """sweep.json's grid trials in start order with their rows (untrained: 1 epoch to run)."""
    sweep = json.loads((run_dir / "sweep.json").read_text())
    grid = (sweep.get("grid") or {}).get("trials")
    if not grid:
        raise SystemExit(f"{run_dir}/sweep.json has no grid trial list: not a grid sweep")
    trials, budgets = [], set()
    for t in grid:
        train, method = t["config"]["train"], t["config"].get("method") or {}
        budget = 1 if method.get("name") == "untrained" else int(train["epochs"])
        trials.append(TrialRun(t["trial_id"], t["cell_id"], t["role"] != "cell", budget))
        if t["role"] == "cell":
            budgets.add((int(train["eval_every"]), int(train["epochs"])))
    if len(budgets) != 1:
        raise SystemExit(f"{run_dir}: the cells' (eval_every, epochs) are {sorted(budgets)}")
    plan = Plan(sweep["metric"], sweep["mode"], sweep.get("scheduler"), *budgets.pop(), trials)
    found: dict[str, list[dict]] = {}
    for path in sorted((run_dir / "tune").glob("*/result.json")):
        if rows := read_rows(path):
            cell = (rows[0].get("config") or {}).get("cell") or {}
            found[cell.get("trial_id") or path.parent.name] = rows
    for trial in trials:
        rows = found.get(trial.trial_id, [])
        trial.seconds = [float(r["time_this_iter_s"]) for r in rows]
        scored = [r for r in rows if isinstance(r.get(plan.metric), int | float)]
        trial.scores = {int(r["training_iteration"]): float(r[plan.metric]) for r in scored}
        trial.spans, trial.ending = busy_spans(rows), ending(rows, trial.budget)
    return plan


def replay(
    plan: Plan, *, slots: int, rf: float, halving: bool = True, grace: int | None = None
) -> dict[str, Outcome]:
    """The plan's trials on their measured epoch seconds, ``slots`` at a time in plan order;
    ASHA judges each scored result in time order but the controls' and last epochs'.
    ``grace``: the first rung (a multiple of the run's ``eval_every``, which it defaults
    to), as a sweep at ``train.eval_every=grace`` would have it."""
    trials, sign = plan.trials, -1.0 if plan.mode == "min" else 1.0
    grace = grace or plan.eval_every
    if grace % plan.eval_every:
        raise SystemExit(f"grace {grace}: the run scored every {plan.eval_every} epochs only")
    bracket = Bracket(grace, plan.epochs, rf) if halving else None
    events = [(0.0, i, 0) for i in range(min(slots, len(trials)))]  # (time, trial, epoch done)
    pending, outcomes = deque(range(len(events), len(trials))), {}
    while events:
        now, i, epoch = heapq.heappop(events)
        trial, score, stop, why = trials[i], trials[i].scores.get(epoch), False, None
        if bracket and not trial.control and score is not None and epoch < plan.epochs:
            stop, rung, cutoff = bracket.on_result(trial.trial_id, epoch, sign * score)
            if stop:
                why = f"stopped at rung {rung:g}: {score:.4f} < cutoff {sign * cutoff:.4f}"
        if not stop and epoch < trial.reached:
            heapq.heappush(events, (now + trial.seconds[epoch], i, epoch + 1))
            continue
        outcomes[trial.trial_id] = Outcome(epoch, now, why)
        if pending:
            heapq.heappush(events, (now, pending.popleft(), 0))
    return outcomes


def best_cells(run_dir: Path) -> list[str]:
    """Cells best or within noise of the best, from every report/*_cells.csv."""
    paths = sorted((run_dir / "report").glob("*_cells.csv"))
    if not paths:
        raise SystemExit(f"{run_dir}/report has no *_cells.csv: make the run's report first")
    rows = [r for path in paths for r in csv.DictReader(path.open(newline=""))]
    return [r["cell"] for r in rows if r["role"] == "cell" and r["within_noise_of_best"] == "True"]


def check_full(plan: Plan, run_dir: Path) -> None:
    """Exit, saying why, unless the run is fifo and every trial ran its whole budget."""
    problems = [f"sweep.json says --scheduler {plan.scheduler}"]
    problems *= plan.scheduler not in (None, "fifo")
    for kind in ("stopped", "interrupted", "not run"):
        if trials := [t for t in plan.trials if t.ending == kind]:
            shown = ", ".join(f"{t.trial_id} ({t.reached}/{t.budget})" for t in trials[:5])
            problems.append(f"{len(trials)} trial(s) {kind}: {shown}{' ...' * (len(trials) > 5)}")
    if problems:
        why = "; ".join(problems) + "; run the grid with --scheduler fifo, give ASHA runs to --asha"
        raise SystemExit(f"{run_dir} is not a FULL run (fifo, every trial at its budget): {why}")


def settings(plan: Plan, best: list[str], slots: int) -> list[dict[str, Any]]:
    """Every ASHA setting the run can replay: first rung at each evaluation epoch before
    the last, reduction factor 2, 3 or 4. Printed, and returned for the JSON line, with
    whether each keeps every best cell (every seed of it) to the end."""
    rows = []
    for grace in range(plan.eval_every, plan.epochs, plan.eval_every):
        for rf in (2, 3, 4):
            outcomes = replay(plan, slots=slots, rf=rf, grace=grace)
            short = {t: o.stopped for t, o in outcomes.items() if o.stopped}
            _, cut = plan.verdict(best, short)
            rungs = [int(m) for m, _ in reversed(Bracket(grace, plan.epochs, rf).rungs)]
            wall = max(o.time for o in outcomes.values()) / 60
            rows.append(
                {"grace": grace, "rf": rf, "rungs": [m for m in rungs if m < plan.epochs]}
                | {"wall_min": round(wall, 2), "stopped": len(short), "best_cells_kept": not cut}
                | {"best_cells_stopped": cut}
            )
    print("grace  rf  rungs       wall (min)  trials stopped  best cells kept")
    for row in rows:
        rungs = ",".join(map(str, row["rungs"])) or "none"
        kept = "yes" if row["best_cells_kept"] else f"no ({len(row['best_cells_stopped'])} seeds)"
        print(
            f"{row['grace']:>5}  {row['rf']:>2}  {rungs:<10}  {row['wall_min']:>10.1f}  "
            f"{row['stopped']:>14}  {kept}"
        )
    return rows


def table(plan: Plan, best: list[str], columns: dict[str, tuple[Plan, dict[str, str]]]) -> None:
    """One row per cell: best or not, then per run 'kept' or its seeds that fell short."""
    rows = [["cell", "best", *columns]]
    for cell in dict.fromkeys(t.cell for t in plan.trials if not t.control):
        row = [cell, "yes" if cell in best else ""]
        for run, short in columns.values():
            seeds = [t.trial_id for t in run.trials if t.cell == cell and t.trial_id in short]
            text = "; ".join(f"{i[len(cell) + 1 :]} {short[i].split(':')[0]}" for i in seeds)
            row.append(text or "kept")
        rows.append(row)
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    for row in rows:
        print("  ".join(f"{x:<{w}}" for x, w in zip(row, widths, strict=True)).rstrip())


def compare_asha(asha: Plan, outcomes: dict[str, Outcome], best: list[str]) -> dict[str, Any]:
    """A real ASHA run next to the replay: a trial agrees when both end it at one epoch."""
    decided = [t for t in asha.trials if t.ending in (*ENDS, "stopped") and t.trial_id in outcomes]
    agree = sum(outcomes[t.trial_id].epoch == t.reached for t in decided)
    kept, lost = asha.verdict(best, asha.shortfalls())
    print(f"ASHA run: {asha.wall() / 60:.1f} min measured, {agree}/{len(decided)} end as replayed")
    figures = {"asha_wall_min": round(asha.wall() / 60, 2), "best_cells_stopped_by_asha": lost}
    kept_all = {"best_cells_kept_by_asha": set(best) <= kept, "decisions_agreeing": agree}
    return figures | kept_all | {"decisions_compared": len(decided)}


def summary(
    full_dir: Path, asha_dir: Path | None, slots: int, rf: float, every_setting: bool = False
) -> dict[str, Any]:
    """Print the comparison and return the headline figures."""
    plan = load_plan(full_dir)
    check_full(plan, full_dir)
    best, full_wall, outcomes = best_cells(full_dir), plan.wall(), replay(plan, slots=slots, rf=rf)
    fifo = max(o.time for o in replay(plan, slots=slots, rf=rf, halving=False).values())
    simulated = max(o.time for o in outcomes.values())
    short = {t: o.stopped for t, o in outcomes.items() if o.stopped}
    kept, cut = plan.verdict(best, short)
    bracket = Bracket(plan.eval_every, plan.epochs, rf)
    rungs = ", ".join(f"{m:g}" for m, _ in reversed(bracket.rungs) if m < plan.epochs) or "none"
    print(f"full run {full_dir.name}, {len(plan.trials)} trials: {full_wall / 60:.1f} min measured")
    print(f"  simulated, no halving, {slots} slots: {fifo / 60:.1f} min (the replay's own bias)")
    print(f"ASHA replay ({plan.epochs} epochs, rungs: {rungs}): {simulated / 60:.1f} min\n")
    walls = {"full_wall_min": full_wall, "fifo_replay_wall_min": fifo, "replay_wall_min": simulated}
    figures: dict[str, Any] = {key: round(sec / 60, 2) for key, sec in walls.items()}
    figures |= {"replay_speedup": round(full_wall / simulated, 3), "best_cells": best}
    figures |= {"best_cells_kept_by_replay": set(best) <= kept, "best_cells_stopped_by_replay": cut}
    columns = {"replay": (plan, short)}
    if asha_dir is not None:
        asha = load_plan(asha_dir)
        if {t.trial_id for t in asha.trials} != set(outcomes):
            raise SystemExit(f"{asha_dir} is not a run of the grid of {full_dir}")
        figures |= compare_asha(asha, outcomes, best)
        figures["asha_speedup"] = round(full_wall / asha.wall(), 3)
        columns["asha run"] = (asha, asha.shortfalls())
    table(plan, best, columns)
    if every_setting:
        print()
        figures["settings"] = settings(plan, best, slots)
        honest = [r for r in figures["settings"] if r["best_cells_kept"]]
        fastest = min(honest, key=lambda r: r["wall_min"]) if honest else None
        figures["fastest_honest_setting"] = fastest and {k: fastest[k] for k in ("grace", "rf")}
        figures["fastest_honest_wall_min"] = fastest and fastest["wall_min"]
    for key in [k for k in ("replay", "asha") if f"best_cells_kept_by_{k}" in figures]:
        print(f"best cells all kept by the {key}: {figures[f'best_cells_kept_by_{key}']}")
        print("".join(f"  {x}\n" for x in figures[f"best_cells_stopped_by_{key}"]), end="")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("full_run", type=Path, help="results/<run>: a --scheduler fifo grid")
    parser.add_argument("--asha", type=Path, help="results/<run>: the same grid under ASHA")
    parser.add_argument("--reduction-factor", type=float, default=2.0)
    parser.add_argument("--slots", type=int, default=2, help="trials at a time (2: a laptop)")
    parser.add_argument(
        "--settings",
        action="store_true",
        help="also replay every first rung and reduction factor (2, 3, 4) the run allows",
    )
    args = parser.parse_args(argv)
    figures = summary(args.full_run, args.asha, args.slots, args.reduction_factor, args.settings)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
