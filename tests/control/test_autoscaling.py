"""Autoscaler-aware admission: the capacity a job is checked against, from the autoscaler's config and report
(faked here: no cluster), the refusal past the ceiling, and the "waiting for nodes" note of a launched job."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import orchestrator.control.autoscaling as autoscaling
import orchestrator.control.manager as manager_module
from orchestrator.control.admission import check_fits_totals
from orchestrator.control.autoscaling import NodeType, cluster_capacity, fixed, grow, read_node_types
from orchestrator.control.index import ray_submission_id
from orchestrator.control.manager import JobManager
from orchestrator.core.errors import OrchError
from orchestrator.core.run import write_attempt
from orchestrator.core.spec import parse_spec
from orchestrator.core.states import JobState
from orchestrator.storage import open_store
from tests.control.test_manager import FakeRay
from tests.paths import REPO_ROOT

URL = "http://127.0.0.1:9"
NONE = {"CPU": 0.0, "GPU": 0.0}
CPU_WORKER = NodeType("cpu_worker", 1.0, 0.0, 2)


def _spec(workers: int, gpus: float = 0.0) -> Any:
    return parse_spec({"name": "a", "workload": "mlp", "scaling": {
        "num_workers": workers, "use_gpu": bool(gpus), **({"gpus_per_worker": gpus} if gpus else {})}})


def _launcher_config(tmp_path: Path, **node_types: dict[str, Any]) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(json.dumps({"max_workers": 3, "head_node_type": "head", "available_node_types": {
        "head": {"resources": {"CPU": 0}, "max_workers": 0}, **node_types}}))
    return path


class FakeCluster:
    """What the dashboard answers: alive nodes (id -> CPUs) and the autoscaler's report (None: no autoscaler)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, nodes: dict[str, float], types: dict[str, str] | None,
                 demand: bool = False, launching: int = 0):
        self.nodes, self.types, self.demand, self.launching = nodes, types, demand, launching
        autoscaling._no_autoscaler.clear()
        monkeypatch.setattr(autoscaling, "fetch_nodes", lambda url, timeout=10.0: [
            {"node_id": n, "state": "ALIVE", "resources_total": {"CPU": c}} for n, c in self.nodes.items()])
        monkeypatch.setattr(autoscaling, "fetch_cluster_status", self.status)

    def totals(self) -> dict[str, float]:
        return {"CPU": sum(self.nodes.values()), "GPU": 0.0}

    def status(self, url: str, timeout: float = 10.0) -> dict[str, Any]:
        load = {"usage": {"CPU": [0.0, self.totals()["CPU"]]}, "pgDemand": [[{"CPU": 1.0}, 2]] if self.demand else [],
                "resourceDemand": []}
        if self.types is None:
            return {"loadMetricsReport": load}
        return {"loadMetricsReport": load, "autoscalerReport": {
            "nodeTypeMapping": self.types, "pendingLaunches": {"cpuWorker": self.launching}, "pendingNodes": []}}


# ---- the ceiling -------------------------------------------------------------------------------------------------
def test_grow_adds_what_each_type_has_left_within_the_cluster_limit():
    big = NodeType("gpu8", 96.0, 8.0, 2)
    small = NodeType("gpu1", 8.0, 1.0, 4)
    capacity = grow({"CPU": 8.0, "GPU": 1.0}, [small, big], Counter({"gpu1": 1}), limit=3)
    # 2 more nodes at most (3 - 1 running): the two big ones give the most of both.
    assert capacity.ceiling == {"CPU": 8.0 + 192.0, "GPU": 1.0 + 16.0}
    assert capacity.now == {"CPU": 8.0, "GPU": 1.0} and capacity.autoscaler
    unlimited = grow(NONE, [small, big], Counter({"gpu1": 1}), limit=None)
    assert unlimited.ceiling == {"CPU": 3 * 8.0 + 2 * 96.0, "GPU": 3.0 + 16.0}
    full = grow(NONE, [CPU_WORKER], Counter({"cpu_worker": 2}), limit=None)
    assert full.ceiling == NONE and full.room == ()


def test_node_types_read_from_a_launcher_config_and_a_kuberay_manifest(tmp_path):
    types, limit = read_node_types(_launcher_config(tmp_path, cpu_worker={"resources": {"CPU": 1}, "max_workers": 2}))
    assert (types, limit) == ([CPU_WORKER], 3)  # the head type is not something to add
    kuberay, none = read_node_types(REPO_ROOT / "cluster" / "kuberay" / "raycluster.yaml")
    assert none is None and [(t.cpus, t.gpus) for t in kuberay] == [(6.0, 1.0)] and kuberay[0].max_workers >= 2
    millicores = tmp_path / "rc.yaml"
    millicores.write_text("kind: RayCluster\nspec:\n  workerGroupSpecs:\n  - groupName: g\n    maxReplicas: 3\n"
                          "    rayStartParams: {num-gpus: '2'}\n    template: {spec: {containers: [{resources: "
                          "{limits: {cpu: 1500m}}}]}}\n")
    assert read_node_types(millicores) == ([NodeType("g", 1.5, 2.0, 3)], None)


@pytest.mark.parametrize("text, field", [("max_workers: [1]\navailable_node_types: {}\n", "max_workers"),
                                         ("available_node_types: {w: {resources: {CPU: -1}}}\n", "w.resources.CPU"),
                                         ("just: text\n", "neither"), ("{unclosed\n", "cannot be read")])
def test_a_bad_autoscaler_config_is_refused_naming_the_field(tmp_path, text, field):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(OrchError, match="ORCH_AUTOSCALER_CONFIG") as err:
        read_node_types(path)
    assert field in str(err.value)


def test_no_autoscaler_means_the_alive_nodes_as_today(monkeypatch, tmp_path):
    cluster = FakeCluster(monkeypatch, {"head": 2.0}, types=None)
    # A config named while the cluster runs no autoscaler (the embedded one, say) changes nothing.
    monkeypatch.setenv("ORCH_AUTOSCALER_CONFIG", str(_launcher_config(tmp_path, w={"resources": {"CPU": 4},
                                                                                    "max_workers": 9})))
    capacity = cluster_capacity(URL, cluster.totals())
    assert capacity == fixed({"CPU": 2.0, "GPU": 0.0}) and not capacity.autoscaler
    with pytest.raises(OrchError, match=r"needs 3 CPUs and 0 GPUs \(3 workers\), but the whole cluster has 2 CPUs"):
        check_fits_totals(_spec(3), capacity, "Job 'a'", "it could never start", "scaling.num_workers")


def test_autoscaling_cluster_admits_what_fits_after_scale_up_and_refuses_past_max(monkeypatch, tmp_path):
    config = _launcher_config(tmp_path, cpu_worker={"resources": {"CPU": 1}, "max_workers": 2})
    monkeypatch.setenv("ORCH_AUTOSCALER_CONFIG", str(config))
    cluster = FakeCluster(monkeypatch, {"head": 0.0, "w1": 1.0}, types={"head": "head", "w1": "cpu_worker"})
    capacity = cluster_capacity(URL, cluster.totals())
    assert capacity.now["CPU"] == 1.0 and capacity.ceiling["CPU"] == 2.0  # one more cpu_worker may come
    check_fits_totals(_spec(2), capacity, "Job 'a'", "it could never start", "scaling.num_workers")  # admitted
    with pytest.raises(OrchError) as err:
        check_fits_totals(_spec(3), capacity, "Job 'a'", "it could never start", "scaling.num_workers")
    message = str(err.value)
    assert "needs 3 CPUs and 0 GPUs" in message and "has 1 CPUs and 0 GPUs now" in message
    assert "can add at most 1 CPUs and 0 GPUs (1 more cpu_worker: 1 CPUs, 0 GPUs each)" in message
    assert "max_workers" in message
    with pytest.raises(OrchError, match="needs 1 CPUs and 2 GPUs"):
        check_fits_totals(_spec(1, gpus=2.0), capacity, "Job 'a'", "it could never start", "scaling.num_workers")


def test_rays_readonly_mirror_of_a_cluster_nobody_scales_is_no_autoscaler(monkeypatch, tmp_path):
    monkeypatch.setenv("ORCH_AUTOSCALER_CONFIG", str(_launcher_config(tmp_path, w={"resources": {"CPU": 4},
                                                                                    "max_workers": 9})))
    cluster = FakeCluster(monkeypatch, {"aa": 2.0, "bb": 1.0}, types={"aa": "node_aa", "bb": "node_bb"})
    assert cluster_capacity(URL, cluster.totals()) == fixed({"CPU": 3.0, "GPU": 0.0})


def test_an_autoscaler_without_its_config_refuses_with_how_to_name_it(monkeypatch):
    monkeypatch.delenv("ORCH_AUTOSCALER_CONFIG", raising=False)
    cluster = FakeCluster(monkeypatch, {"head": 0.0}, types={"head": "head"})
    capacity = cluster_capacity(URL, cluster.totals())
    assert capacity.autoscaler and capacity.ceiling == capacity.now
    with pytest.raises(OrchError, match="runs an autoscaler, but orch does not know what it can add: set "
                                        "ORCH_AUTOSCALER_CONFIG"):
        check_fits_totals(_spec(2), capacity, "Job 'a'", "it could never start", "scaling.num_workers")


# ---- the manager on an autoscaling cluster -------------------------------------------------------------------------
@pytest.fixture
def manager(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ORCH_AUTOSCALER_CONFIG", str(_launcher_config(
        tmp_path, cpu_worker={"resources": {"CPU": 1}, "max_workers": 2})))
    cluster = FakeCluster(monkeypatch, {"head": 0.0}, types={"head": "head"}, demand=True, launching=2)
    monkeypatch.setattr(manager_module, "cluster_totals", lambda url: cluster.totals())
    mgr = JobManager(address=URL)
    mgr._shares_machine[URL] = True
    mgr._ray[URL] = FakeRay()
    mgr.fake_cluster = cluster  # type: ignore[attr-defined]
    return mgr


def test_a_job_that_fits_after_scale_up_is_launched_and_says_what_nodes_it_waits_for(manager):
    spec = parse_spec({"name": "a", "workload": "mlp", "scaling": {"num_workers": 2}})
    rec = manager.submit(spec)
    assert rec.state == JobState.STARTING  # handed to Ray at once: its pending workers make the autoscaler act
    manager._ray[URL].statuses[ray_submission_id(rec)] = "RUNNING"
    rec = manager.get(rec.id)
    assert rec.state == JobState.RUNNING
    assert rec.message == ("waiting for nodes: needs 2 CPUs and 0 GPUs, the cluster has 0 CPUs and 0 GPUs free, its "
                           "autoscaler can add 2 CPUs and 0 GPUs (2 more cpu_worker: 1 CPUs, 0 GPUs each); "
                           "2 node(s) starting")
    # The workers start on the new nodes (rank 0 records the attempt): the note goes.
    manager.fake_cluster.nodes.update(w1=1.0, w2=1.0)
    write_attempt(open_store(rec.storage_uri), restored_step=0)
    assert manager.get(rec.id).message == ""
    with pytest.raises(OrchError, match="even at its largest"):
        manager.submit(parse_spec({"name": "b", "workload": "mlp", "scaling": {"num_workers": 5}}))


def test_the_queue_counts_the_ceiling_on_an_autoscaling_cluster(manager):
    first = manager.submit(parse_spec({"name": "a", "workload": "mlp", "scaling": {"num_workers": 2}}))
    second = manager.submit(parse_spec({"name": "b", "workload": "mlp", "scaling": {"num_workers": 1}}))
    # The first takes the whole ceiling (2 nodes to come); the second waits in orch's own queue.
    assert (first.state, second.state) == (JobState.STARTING, JobState.QUEUED)
