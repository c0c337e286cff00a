"""``--resume`` restores Tune's pickled state only as clarlab recorded it when the fit
ended or was interrupted: a replaced ``tune/`` file, an added pickle, a folder re-created
from a tampered copy, a fit that never recorded (killed) and state kept on shared storage
are refused unless the user says ``--trust-results``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from core.sweep import trust
from core.sweep.state import SWEEP_FILE, SweepState
from tests.test_safety import new_sweep, registry_dir  # noqa: F401

pytestmark = pytest.mark.usefixtures("registry_dir")  # a registry of this test's own


def _tune_folder(run_dir: Path) -> str:
    """What Tune leaves under tune/: its own state, a trial's logs, pickle and checkpoint."""
    tune = run_dir / "tune"
    trial = tune / "cell-a"
    (trial / "checkpoint_000000").mkdir(parents=True)
    (tune / "tuner.pkl").write_bytes(b"tuner pickle")
    (tune / "experiment_state-2026.json").write_text('{"trial_data": "pickled trials"}')
    (trial / "params.pkl").write_bytes(b"params pickle")
    (trial / "result.json").write_text('{"epoch": 1}\n')
    (trial / "checkpoint_000000" / "state.pt").write_bytes(b"weights")
    return str(tune)


def _recorded(tmp_path: Path) -> tuple[Path, str]:
    run_dir = new_sweep(tmp_path / "results")
    experiment = _tune_folder(run_dir)
    trust.record_tune_state(run_dir / SWEEP_FILE, experiment)
    return run_dir, experiment


def test_recorded_state_is_trusted_while_the_logs_grow(
    tmp_path: Path,
) -> None:
    run_dir, experiment = _recorded(tmp_path)
    trust.ensure_tune_trusted(run_dir, experiment)
    with (Path(experiment) / "cell-a" / "result.json").open("a") as log:
        log.write('{"epoch": 2}\n')  # data Tune appends, not unpickled
    (Path(experiment) / "cell-a" / "checkpoint_000000" / "state.pt").write_bytes(b"newer")
    trust.ensure_tune_trusted(run_dir, experiment)
    SweepState.load(run_dir).save(run_dir)  # a state file saved again keeps the digests
    trust.ensure_tune_trusted(run_dir, experiment)


@pytest.mark.parametrize(
    ("tamper", "named"),
    [
        (lambda tune: (tune / "tuner.pkl").write_bytes(b"os.system pickle"), "tuner.pkl"),
        (lambda tune: (tune / "cell-a" / "extra.pkl").write_bytes(b"x"), "cell-a/extra.pkl"),
        (lambda tune: (tune / "experiment_state-2026.json").unlink(), "experiment_state-2026.json"),
        (lambda tune: (tune / "cell-a" / "params.pkl").write_bytes(b"evil"), "cell-a/params.pkl"),
    ],
)
def test_a_replaced_added_or_removed_state_file_is_refused_by_name(
    tamper,
    named: str,
    tmp_path: Path,
) -> None:
    run_dir, experiment = _recorded(tmp_path)
    tamper(Path(experiment))
    with pytest.raises(
        trust.UntrustedResultsError, match=f"changed since clarlab recorded it: {named}"
    ):
        trust.ensure_tune_trusted(run_dir, experiment)


def test_a_folder_recreated_from_a_tampered_copy_is_refused(
    tmp_path: Path,
) -> None:
    run_dir, experiment = _recorded(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "tune" / "tuner.pkl").write_bytes(b"tampered")
    shutil.rmtree(run_dir)
    shutil.copytree(copy, run_dir)  # the same path, the same sweep.json and token
    SweepState.ensure_trusted(run_dir)  # the state file alone cannot tell
    with pytest.raises(trust.UntrustedResultsError, match="tuner.pkl"):
        trust.ensure_tune_trusted(run_dir, experiment)


def test_unrecorded_or_shared_state_needs_the_override(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_dir = new_sweep(tmp_path / "results")
    experiment = _tune_folder(run_dir)  # the fit was killed before it could record
    with pytest.raises(trust.UntrustedResultsError, match="no digests .* were recorded"):
        trust.ensure_tune_trusted(run_dir, experiment)
    shared = str(tmp_path / "shared-storage" / "sweep-a" / "tune")
    with pytest.raises(trust.UntrustedResultsError, match="outside the results folder"):
        trust.ensure_tune_trusted(run_dir, shared)

    trust.trust_results()
    try:
        trust.ensure_tune_trusted(run_dir, experiment)
    finally:
        trust.trust_results(False)
    assert "trusting Tune's state on request" in capsys.readouterr().err
    trust.ensure_tune_trusted(run_dir, experiment)  # recorded: no override the second time
