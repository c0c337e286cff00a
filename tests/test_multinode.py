"""Tracking from every node, and DDP across nodes: a real two-node local Ray cluster, a
real MLflow server.

A user on the head passes ``--tracking-uri http://localhost:5000``. Trials run on other
nodes, where ``localhost`` is the node itself. Here the server listens on this machine's
node address only (as cluster.yaml binds the head's private address), the trial can only
run on the second node (a custom resource only that node has), and the trial's run must
arrive in the driver's store.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from core.sweep import SweepRequest, run_sweep
from core.tracking import RunIdentity, find_trial_runs, tracking_client
from core.train import CallbackContext, run_loop
from tests.servers import MlflowServer
from tests.servers import answers as _answers
from tests.test_sweep_e2e import _tiny

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node_ip() -> str:
    from ray._private.services import get_node_ip_address

    address = get_node_ip_address()
    if address.startswith("127."):
        pytest.fail(
            f"this machine's node address is loopback ({address}); the test needs a LAN one"
        )
    return address


@pytest.fixture(scope="module")
def node_server(node_ip: str, tmp_path_factory: pytest.TempPathFactory):
    """clarlab's MLflow server bound to the node address only (not loopback, not 0.0.0.0),
    as cluster.yaml starts the head's."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), host=node_ip).launch()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def two_nodes(ray_cluster, node_server):
    """The session's head (2 CPUs, one ``slot``) and, for this module, a second node with
    2 CPUs, one ``slot`` and the ``second_node`` resource: a trial whose workers each need
    a slot has one worker per node."""
    cluster = ray_cluster.cluster
    second = cluster.add_node(num_cpus=2, resources={"second_node": 2, "slot": 1})
    cluster.wait_for_nodes()
    node_server.wait_until_ready()  # its start overlapped the node's
    try:
        yield cluster, second.node_id
    finally:
        cluster.remove_node(second)


PLANTED = "planted-pw-5c1e"


def test_a_trial_on_another_node_logs_to_the_drivers_server(
    two_nodes, node_server, node_ip, fsdd_root: Path, cache_dir: Path, tmp_path: Path
) -> None:
    cluster, second_node_id = two_nodes
    port = node_server.port
    assert not _answers(f"http://localhost:{port}/health"), "the server must not be on loopback"
    said = io.StringIO()
    outcome = run_sweep(
        SweepRequest(
            preset="quick",
            overrides=_tiny(fsdd_root, cache_dir),
            axis_values={"augment.pipeline": ["FD"], "frontend.name": ["stft3"]},
            address=cluster.address,
            worker_resources={"second_node": 1},
            controls=False,
            # A password planted in the URI, as a user might pass it: it must reach no
            # message, tag, state file, Tune parameter or MLflow record.
            tracking_uri=f"http://clarlab:{PLANTED}@localhost:{port}",
            results_dir=tmp_path / "results",
            command_line=f"pytest multinode --tracking-uri http://clarlab:{PLANTED}@localhost:{port}",
        ),
        stream=said,
    )
    shown = said.getvalue()
    assert f"trials log to http://{node_ip}:{port}" in shown
    assert outcome.tracking_uri == f"http://{node_ip}:{port}"
    assert [record.status for record in outcome.records] == ["FINISHED"], shown

    # Read back from the server, as the driver (and the MLflow UI) sees it.
    (child,) = find_trial_runs(outcome.tracking_uri, outcome.parent_run_id)
    assert child.info.status == "FINISHED"
    assert child.data.tags["clarlab.ray_node_id"] == second_node_id, "it ran on the second node"
    assert {"loss", "test_top1"} <= set(child.data.metrics)
    parent = tracking_client(outcome.tracking_uri).get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert "MLFLOW_TRACKING_PASSWORD" in shown and PLANTED not in shown
    assert os.environ.pop("MLFLOW_TRACKING_PASSWORD") == PLANTED  # where the trials read it
    os.environ.pop("MLFLOW_TRACKING_USERNAME")
    for folder in (tmp_path / "results", node_server.folder):  # every file, binary included
        holding = [
            p for p in folder.rglob("*") if p.is_file() and PLANTED.encode() in p.read_bytes()
        ]
        assert not holding, f"the planted password is in {holding}"


def test_a_two_worker_trial_spans_both_nodes_logs_over_http_and_gathers_the_batch(
    two_nodes, node_server, node_ip, fsdd_root: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """A TorchTrainer trial with one worker on each node (gloo across the two raylets):
    rank 0 logs the one run to the driver's server over HTTP, and the run names both
    nodes. Without augmentation (not even the random view base that identical views
    would get, whose draws differ per rank) and for one step, both workers together see
    the one process's batch split in two: with negatives gathered across workers and
    batch norm synchronised, the first step's loss is the single process's."""
    cluster, second_node_id = two_nodes
    port = node_server.port
    outcome = run_sweep(
        SweepRequest(
            preset="quick",
            overrides={
                **_tiny(fsdd_root, cache_dir),
                "train.batch_size": 8,
                "augment.probability": 0.0,
                "augment.view_base": [],
            },
            axis_values={"augment.pipeline": ["TM"], "frontend.name": ["stft3"]},
            address=cluster.address,
            workers_per_trial=2,
            worker_resources={"slot": 1},
            controls=False,
            tracking_uri=f"http://localhost:{port}",
            results_dir=tmp_path / "results",
            command_line="pytest multinode two workers",
        ),
        stream=io.StringIO(),
    )
    assert outcome.resources.use_torch_trainer and outcome.resources.workers_per_trial == 2
    assert [record.status for record in outcome.records] == ["FINISHED"]
    (child,) = find_trial_runs(outcome.tracking_uri, outcome.parent_run_id)
    assert child.info.status == "FINISHED"
    nodes = set(child.data.tags["clarlab.ray_node_ids"].split(","))
    head_node_id = cluster.head_node.node_id
    assert nodes == {head_node_id, second_node_id}, "one worker on each node"
    history = tracking_client(outcome.tracking_uri).get_metric_history(child.info.run_id, "loss")
    assert [point.step for point in history] == [0]

    one = outcome.trials[0].config.with_overrides({"train.num_workers": 1})
    reports: list[dict[str, float]] = []
    alone = RunIdentity(tracking_uri=f"sqlite:///{tmp_path / 'one.db'}", experiment="one")
    run_loop(one, CallbackContext(lambda metrics, _: reports.append(metrics)), alone)
    assert child.data.metrics["nt_xent"] == pytest.approx(reports[0]["nt_xent"], rel=1e-4)
