"""The Ray executor on a real two-node Ray cluster on this machine (ray.cluster_utils: two
raylets with their own CPUs, one GCS): a sweep's runs land on both nodes, the artifacts are
where README says, and killing one node's raylet mid-run fails only the runs it held, which the
next sweep redoes. Marked `cluster` (`-m cluster` selects it)."""
from __future__ import annotations

import os
import threading
import time

import pytest

from harness import executors, matrix
from harness.store import Store
from harness.sweep import sweep
from tests.conftest import write_matrix

ray = pytest.importorskip("ray", reason="the Ray executor needs Ray: pip install -e '.[ray]'")
pytestmark = pytest.mark.cluster

# long enough (a few seconds) for the kill to land while both nodes train
STEPS_TO_KILL_IN = 250
# Ray notices a dead node after health_check_failure_threshold missed checks
FAST_DEATH = {"health_check_period_ms": 500, "health_check_failure_threshold": 4, "health_check_timeout_ms": 500}


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    two = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                       "_system_config": FAST_DEATH})
    two.add_node(num_cpus=1)
    two.wait_for_nodes()
    yield two
    two.shutdown()


def matrix_text(tiny_models, tiny_dataset, seeds: list[int], steps: int) -> str:
    return f"""
name: cluster
models: ["{tiny_models['encoder']}"]
methods: [{{lora: {{lr: 1.0e-2, r: 4}}}}, {{full: {{lr: 1.0e-3}}}}]
tasks:
  - sentiment: {{dataset: "{tiny_dataset}", group_column: movie, train_size: 32, val_size: 8, test_size: 16}}
training: {{max_steps: {steps}, batch_size: 8, max_length: 32, eval_batch_size: 16, device: cpu, dtype: float32}}
seeds: {seeds}
"""


def node_ids(cluster) -> tuple[str, str]:
    head = cluster.head_node.node_id
    (other,) = [node.node_id for node in cluster.worker_nodes]
    return head, other


def test_runs_land_on_both_nodes_with_their_artifacts(cluster, tiny_models, tiny_dataset, tmp_path):
    loaded = matrix.load(write_matrix(tmp_path, matrix_text(tiny_models, tiny_dataset, [0, 1], 4)))
    results = tmp_path / "results"
    store = Store(results / "harness.duckdb")
    summary = sweep(loaded, store, results, progress=False, echo=lambda line: None,
                    executor=executors.RayExecutor(address=cluster.address))
    assert sorted(summary.done) == sorted(spec.run_id for spec in loaded.runs)
    nodes = {spec.run_id: store.run(spec.run_id)["node"] for spec in loaded.runs}
    assert set(nodes.values()) == set(node_ids(cluster)), nodes
    for spec in loaded.runs:  # README: each worker writes results/runs/<run_id>/artifact on its node's disk
        artifact = results / "runs" / spec.run_id / "artifact"
        size = sum(f.stat().st_size for f in artifact.rglob("*") if f.is_file()) / 2**20
        assert size == pytest.approx(store.metrics(spec.run_id).set_index("name").loc["artifact_mb", "value"])


def test_killing_a_nodes_raylet_fails_only_its_run_and_the_next_sweep_redoes_it(cluster, tiny_models, tiny_dataset,
                                                                               tmp_path):
    loaded = matrix.load(write_matrix(tmp_path, matrix_text(tiny_models, tiny_dataset, [2, 3], STEPS_TO_KILL_IN)))
    results = tmp_path / "results"
    store = Store(results / "harness.duckdb")
    head, victim = node_ids(cluster)
    finished = {}
    thread = threading.Thread(target=lambda: finished.update(first=sweep(
        loaded, store, results, progress=False, echo=lambda line: None,
        executor=executors.RayExecutor(address=cluster.address))))
    thread.start()
    victim_node = next(iter(cluster.worker_nodes))
    try:
        # one CPU per node: the first two runs train at once, one on each node
        deadline = time.monotonic() + 300  # Ray workers start slowly on a loaded machine
        while len(training(loaded, results)) < 2 and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.1)
        in_flight = training(loaded, results)
        assert len(in_flight) == 2, "the first two runs never trained at the same time"
        victim_node.kill_raylet()
        thread.join(300)
        first = finished["first"]
        assert len(first.failed) == 1 and len(first.done) == 3, first
        (lost,) = first.failed
        error = store.run(lost)["error"]
        assert error.startswith("Ray task failed: NodeDiedError") and victim in error, error
        assert lost in in_flight and set(in_flight) - {lost} <= set(first.done)  # the head's run went on
        assert {store.run(run_id)["node"] for run_id in first.done} == {head}
        assert not (results / "runs" / lost / "artifact").exists()

        again = sweep(loaded, store, results, progress=False, echo=lambda line: None,
                      executor=executors.RayExecutor(address=cluster.address))
        assert (again.done, again.failed, again.already_finished) == ([lost], [], 3)
        assert store.run(lost)["status"] == "done" and store.run(lost)["node"] == head
    finally:
        thread.join(300)
        cluster.remove_node(victim_node, allow_graceful=False)
        cluster.add_node(num_cpus=1)  # two live nodes again, as the other test expects
        cluster.wait_for_nodes()


def training(loaded, results) -> list[str]:
    """The runs whose Trainer has started (it makes their scratch folder)."""
    return [spec.run_id for spec in loaded.runs if (results / "runs" / spec.run_id / "trainer").exists()]
