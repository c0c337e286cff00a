"""Resume trust (``core.sweep.trust``) and race-free run names (``unique_run_name``).

``--resume`` hands a results folder to Tune, which unpickles its state: these tests
write real ``sweep.json`` files through :class:`SweepState`, copy and edit them as a user
or an attacker would, and check which ones a resume accepts. Each test has its own
registry folder (``CLARLAB_STATE_DIR``), so nothing touches the real one.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest

from core.config import ExperimentConfig
from core.sweep import state as state_module
from core.sweep import trust
from core.sweep.resources import Resources
from core.sweep.search import load_search
from core.sweep.state import SWEEP_FILE, GridDetails, SearchDetails, SweepState, unique_run_name
from core.sweep.trials import Trial
from core.tracking import RunIdentity


@pytest.fixture(autouse=True)
def registry_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A registry of this test's own; no override from the environment or an earlier test."""
    folder = tmp_path / "state"
    monkeypatch.setenv(trust.STATE_DIR_ENV, str(folder))
    monkeypatch.delenv(trust.TRUST_ENV, raising=False)
    monkeypatch.setattr(trust, "_override", False)
    return folder


def make_state(results: Path, run_name: str) -> SweepState:
    config = ExperimentConfig()
    trials = [
        Trial(f"stft3-{a}-{b}", "stft3", a, b, config.with_overrides({"train.seed": seed}))
        for seed, (a, b) in enumerate([("PS", "FD"), ("FD", "TM"), ("TM", "PS")])
    ]
    return SweepState(
        kind="grid",
        run_name=run_name,
        ablation="aug_matrix",
        space_file="search_spaces/aug_matrix.yaml",
        preset="quick",
        identity=RunIdentity(
            tracking_uri=f"sqlite:///{results}/mlflow.db",
            experiment="clarlab-aug_matrix",
            ablation="aug_matrix",
            parent_run_id="0123abcd",
            results_dir=results,
        ),
        metric="test_top1",
        mode="max",
        resources=Resources(),
        scheduler=None,
        storage_root=str(results),
        max_failures=0,
        command_line="run_aug_matrix.py --preset quick",
        grid=GridDetails(trials, ["PS", "FD", "TM"], ["stft3"], seeds=1, report=None),
    )


def make_search_state(results: Path, run_name: str) -> SweepState:
    """A search's state, as ``run_search.py`` writes it before its first trial."""
    _, settings = load_search("search")
    grid = make_state(results, run_name)
    return replace(
        grid,
        kind="search",
        ablation="search",
        space_file="search_spaces/search.yaml",
        grid=None,
        search=SearchDetails(settings, ExperimentConfig()),
    )


def new_sweep(results: Path, run_name: str = "sweep-a") -> Path:
    run_dir = results / run_name
    make_state(results, run_name).save(run_dir)
    return run_dir


# --- resume trust ---------------------------------------------------------------------------
def test_a_sweep_this_user_wrote_is_trusted_and_recorded_privately(
    tmp_path: Path, registry_dir: Path
) -> None:
    run_dir = new_sweep(tmp_path / "results")

    SweepState.ensure_trusted(run_dir)  # no error

    registry = registry_dir / trust.REGISTRY_FILE
    assert stat.S_IMODE(registry.stat().st_mode) == 0o600
    assert stat.S_IMODE(registry_dir.stat().st_mode) == 0o700
    entries = json.loads(registry.read_text())["folders"]
    token = json.loads((run_dir / SWEEP_FILE).read_text())[trust.TOKEN_KEY]
    assert entries[str((run_dir / SWEEP_FILE).resolve())]["token"] == token
    assert len(token) == 32 and SweepState.load(run_dir).trust_token == token
    # A second sweep gets its own token and its own entry beside the first.
    other = new_sweep(tmp_path / "results", "sweep-b")
    assert json.loads((other / SWEEP_FILE).read_text())[trust.TOKEN_KEY] != token
    assert len(json.loads(registry.read_text())["folders"]) == 2


def test_a_copied_folder_is_refused_and_the_message_says_how_it_knows(tmp_path: Path) -> None:
    original = new_sweep(tmp_path / "results")
    copy = tmp_path / "from-a-colleague" / "sweep-a"
    shutil.copytree(original, copy)

    with pytest.raises(trust.UntrustedResultsError) as refused:
        SweepState.ensure_trusted(copy)

    message = str(refused.value)
    registry = trust.registry_path()
    assert f"{registry} has no entry for {(copy / SWEEP_FILE).resolve()}" in message
    assert "pickle" in message
    assert "--trust-results" in message and f"{trust.TRUST_ENV}=1" in message
    SweepState.ensure_trusted(original)  # the original stays trusted


def test_an_edited_trial_list_is_refused(tmp_path: Path) -> None:
    run_dir = new_sweep(tmp_path / "results")
    raw = json.loads((run_dir / SWEEP_FILE).read_text())
    raw["grid"]["trials"] = raw["grid"]["trials"][:2]  # one cell fewer, token untouched
    (run_dir / SWEEP_FILE).write_text(json.dumps(raw, indent=1))

    with pytest.raises(trust.UntrustedResultsError, match="changed since clarlab wrote it"):
        SweepState.ensure_trusted(run_dir)


def test_a_redirected_storage_root_is_refused(tmp_path: Path) -> None:
    """Where Tune restores from is the field an attacker would change: it is hashed too."""
    run_dir = new_sweep(tmp_path / "results")
    raw = json.loads((run_dir / SWEEP_FILE).read_text())
    raw["storage_root"] = str(tmp_path / "elsewhere")
    (run_dir / SWEEP_FILE).write_text(json.dumps(raw, indent=1))

    with pytest.raises(trust.UntrustedResultsError, match="changed since"):
        SweepState.ensure_trusted(run_dir)


def test_another_sweeps_file_put_in_place_is_a_token_mismatch(tmp_path: Path) -> None:
    mine = new_sweep(tmp_path / "results", "sweep-a")
    other = new_sweep(tmp_path / "results", "sweep-b")
    shutil.copyfile(other / SWEEP_FILE, mine / SWEEP_FILE)

    with pytest.raises(trust.UntrustedResultsError, match="token mismatch"):
        SweepState.ensure_trusted(mine)


def test_a_sweep_from_before_the_registry_is_refused_with_the_reason(tmp_path: Path) -> None:
    run_dir = tmp_path / "results" / "old-sweep"
    run_dir.mkdir(parents=True)
    raw = make_state(tmp_path / "results", "old-sweep").to_json()
    del raw[trust.TOKEN_KEY]
    (run_dir / SWEEP_FILE).write_text(json.dumps(raw))
    assert SweepState.load(run_dir).trust_token is None

    with pytest.raises(trust.UntrustedResultsError, match="carries no trust_token"):
        SweepState.ensure_trusted(run_dir)


def test_the_override_lets_a_folder_through_once_and_records_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "copied" / "sweep-a"
    shutil.copytree(new_sweep(tmp_path / "results"), copy)

    monkeypatch.setenv(trust.TRUST_ENV, "1")
    SweepState.ensure_trusted(copy)
    assert "trusting" in capsys.readouterr().err
    monkeypatch.delenv(trust.TRUST_ENV)
    SweepState.ensure_trusted(copy)  # recorded: no override needed the second time

    # An old sweep without a token, trusted through the CLI's function, and then saved
    # again by the resume: it gets a token and stays trusted.
    old = tmp_path / "results" / "old-sweep"
    old.mkdir()
    raw = make_state(tmp_path / "results", "old-sweep").to_json()
    del raw[trust.TOKEN_KEY]
    (old / SWEEP_FILE).write_text(json.dumps(raw))
    trust.trust_results()
    SweepState.ensure_trusted(old)
    trust.trust_results(False)
    state = SweepState.load(old)
    state.save(old)
    assert SweepState.load(old).trust_token is not None
    SweepState.ensure_trusted(old)


def test_a_registry_others_can_write_vouches_for_nothing(
    tmp_path: Path, registry_dir: Path
) -> None:
    run_dir = new_sweep(tmp_path / "results")
    registry = registry_dir / trust.REGISTRY_FILE
    registry.chmod(0o666)

    with pytest.raises(trust.UntrustedResultsError, match="writable by others"):
        SweepState.ensure_trusted(run_dir)
    # The next sweep this user writes sets the tampered registry aside and starts a
    # private one (the old entries are not carried over).
    fresh = new_sweep(tmp_path / "results", "sweep-b")
    assert stat.S_IMODE(registry.stat().st_mode) == 0o600
    SweepState.ensure_trusted(fresh)
    with pytest.raises(trust.UntrustedResultsError, match="has no entry"):
        SweepState.ensure_trusted(run_dir)


def test_a_registry_folder_others_can_write_vouches_for_nothing(
    tmp_path: Path, registry_dir: Path
) -> None:
    run_dir = new_sweep(tmp_path / "results")
    registry_dir.chmod(0o777)  # anyone could swap in a registry of their own
    with pytest.raises(trust.UntrustedResultsError, match=f"{registry_dir} is writable by"):
        SweepState.ensure_trusted(run_dir)


def test_a_registry_that_cannot_be_written_does_not_stop_a_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The sweep's own file is what matters for running it; without its entry only a
    resume needs the override, and the warning says so."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv(trust.STATE_DIR_ENV, str(blocker / "state"))

    run_dir = new_sweep(tmp_path / "results")

    assert (run_dir / SWEEP_FILE).is_file()
    assert "--trust-results" in capsys.readouterr().err
    with pytest.raises(trust.UntrustedResultsError):
        SweepState.ensure_trusted(run_dir)


def test_sweeps_saved_at_once_all_keep_their_entries(tmp_path: Path) -> None:
    """The registry is read, changed and replaced under a lock: no sweep loses its entry to
    another that saved at the same moment."""
    results = tmp_path / "results"
    states = [make_state(results, f"sweep-{number}") for number in range(8)]
    barrier = threading.Barrier(len(states))
    errors: list[BaseException] = []

    def save(state: SweepState) -> None:
        try:
            barrier.wait()
            state.save(results / state.run_name)
        except BaseException as error:  # reported below, with the thread's failure
            errors.append(error)

    threads = [threading.Thread(target=save, args=(state,)) for state in states]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    for state in states:
        SweepState.ensure_trusted(results / state.run_name)


def test_resume_and_report_only_check_trust_before_loading_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the runner: a copied folder never reaches the report (which reads Tune's
    state); the folder this user wrote does."""
    from core.sweep import runner
    from core.sweep.request import SweepRequest

    reported: list[Path] = []
    monkeypatch.setitem(
        runner.FINISHERS, "grid", lambda state, run_dir, stream, **kw: reported.append(run_dir)
    )
    results = tmp_path / "results"
    original = new_sweep(results)
    shutil.copytree(original, results / "copied")

    for which in ("copied", str(results / "copied")):
        for flags in ({"report_only": which}, {"resume": which}):
            request = SweepRequest(results_dir=results, **flags)
            with pytest.raises(trust.UntrustedResultsError, match="no entry"):
                runner.run_sweep(request)
    assert reported == []

    runner.run_sweep(SweepRequest(results_dir=results, report_only="sweep-a"))
    assert reported == [original.resolve()]


def test_resume_checks_the_remaining_trials_data_before_ray_starts(
    tmp_path: Path, fsdd_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The data moves with ``$CLARLAB_DATA``: a resume from a shell without it is refused
    in seconds, naming the dataset and the variable, instead of failing every remaining
    trial after Ray has started; with the data where it says, the resume goes on to Ray."""
    from core.sweep import runner
    from core.sweep.preflight import PreflightError
    from core.sweep.request import SweepRequest

    class RayStarted(Exception):
        pass

    def start_ray(request: SweepRequest) -> None:
        raise RayStarted

    monkeypatch.setattr(runner, "start_ray", start_ray)
    results = tmp_path / "results"
    new_sweep(results)
    assert SweepState.load(results / "sweep-a").grid.trials[0].config.data.dataset == "fsdd"
    monkeypatch.setenv("CLARLAB_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(PreflightError, match=r"fsdd.*CLARLAB_DATA"):
        runner.run_sweep(SweepRequest(results_dir=results, resume="sweep-a"))

    monkeypatch.setenv("CLARLAB_DATA", str(fsdd_root.parent))
    with pytest.raises(RayStarted):
        runner.run_sweep(SweepRequest(results_dir=results, resume="sweep-a"))


def test_a_searchs_state_refuses_a_foreign_folder_like_a_grids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A search resumes into its Optuna study and Tune's pickled state: the same state
    file, token and registry entry guard it, through the command line, before Ray."""
    from ablations import run_search
    from core.sweep import runner

    def never(*args: object) -> None:
        raise AssertionError("Ray was started for a folder that should have been refused")

    monkeypatch.setattr(runner, "start_ray", never)

    results = tmp_path / "results"
    original = results / "search-a"
    make_search_state(results, "search-a").save(original)
    SweepState.ensure_trusted(original)
    assert SweepState.load(original).search is not None
    shutil.copytree(original, results / "copied")
    for flags in (["--resume", "copied"], ["--report-only", "copied"]):
        code = run_search.main([*flags, "--results", str(results)])
        assert code == run_search.EXIT_BAD_INPUT
        err = capsys.readouterr().err
        assert "refusing to resume or report on" in err and "has no entry" in err
    # Nor does a grid's script take a search's folder for a grid's.
    from ablations import run_aug_matrix

    assert run_aug_matrix.main(["--report-only", "search-a", "--results", str(results)]) == 2
    assert "holds a search" in capsys.readouterr().err


# --- run names --------------------------------------------------------------------------------
class _FrozenClock(datetime):
    """Every call in the same second, as two sweeps started together see it."""

    @classmethod
    def now(cls, tz: object = None) -> _FrozenClock:  # type: ignore[override]
        return cls(2025, 3, 14, 15, 9, 26)


def test_sweeps_started_in_the_same_second_get_different_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_module, "datetime", _FrozenClock)
    results = tmp_path / "results"  # does not exist yet: the first claim creates it
    barrier = threading.Barrier(8)
    names: list[str] = []

    def claim() -> None:
        barrier.wait()
        names.append(unique_run_name(results, "aug_matrix-quick"))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    stem = "aug_matrix-quick-20250314-150926"
    assert sorted(names) == sorted([stem] + [f"{stem}-{n}" for n in range(2, 9)])
    assert sorted(p.name for p in results.iterdir()) == sorted(names)


def test_a_claimed_name_skips_folders_and_files_and_the_sweep_saves_into_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_module, "datetime", _FrozenClock)
    results = tmp_path / "results"
    stem = "aug_matrix-quick-20250314-150926"
    (results / stem).mkdir(parents=True)  # an earlier sweep
    (results / f"{stem}-2").write_text("not a folder")

    name = unique_run_name(results, "aug_matrix-quick")

    assert name == f"{stem}-3" and (results / name).is_dir()
    assert not (results / name / SWEEP_FILE).exists()  # run_sweep's "already a sweep" check
    make_state(results, name).save(results / name)  # what run_sweep does next
    SweepState.ensure_trusted(results / name)
    assert os.listdir(results / name) == [SWEEP_FILE]
