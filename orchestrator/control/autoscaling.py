"""What an autoscaling Ray cluster can grow to, and what a job waits for on it.

A job is admitted against the cluster's ceiling: the alive nodes plus what the autoscaler may still add (its node
types' sizes and `max_workers`, within the cluster-wide `max_workers`). Ray's dashboard (`/api/cluster_status`,
the autoscaler's own report) says whether an autoscaler runs, which node type each alive node is, and what it is
launching, but Ray 2.60 serves no node-type sizes or limits over HTTP: those are in the autoscaler's config, the
same file the operator deployed (the cluster-launcher YAML of `ray up`, or the KubeRay RayCluster manifest), which
ORCH_AUTOSCALER_CONFIG names. A cluster without an autoscaler keeps its alive nodes as the ceiling (today's
fixed-size behaviour).
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator.control.cluster_address import ClusterUnavailable, fetch_cluster_status, fetch_nodes
from orchestrator.control.index import JobIndex, JobRecord
from orchestrator.core.errors import OrchError
from orchestrator.core.run import latest_attempt_start
from orchestrator.core.states import JobState
from orchestrator.storage import ObjectStore

CONFIG_ENV = "ORCH_AUTOSCALER_CONFIG"
RESOURCES = ("CPU", "GPU")
WAITING = "waiting for nodes"
_NO_AUTOSCALER_TTL_S = 60.0  # a fixed cluster is asked again only this often (every tick would be a request)
_no_autoscaler: dict[str, float] = {}  # url -> until when it is known to run no autoscaler


@dataclass(frozen=True)
class NodeType:
    """A worker node type of the autoscaler: one node's CPUs and GPUs, and how many such nodes it may run."""

    name: str
    cpus: float
    gpus: float
    max_workers: int

    def size(self) -> str:
        return f"{self.cpus:g} CPUs, {self.gpus:g} GPUs"


@dataclass(frozen=True)
class Capacity:
    """A cluster's CPUs and GPUs now (alive nodes) and at most (after the autoscaler adds what it may)."""

    now: dict[str, float]
    ceiling: dict[str, float]
    autoscaler: bool = False
    room: tuple[tuple[NodeType, int], ...] = ()  # node types with nodes left to add, and how many
    unknown: tuple[str, ...] = field(default=())  # why the ceiling may be too low (nothing known, sizes missing)

    def can_add(self) -> str:
        """'2 CPUs and 0 GPUs (2 more cpu_worker: 1 CPUs, 0 GPUs each)'."""
        add = {k: self.ceiling[k] - self.now[k] for k in RESOURCES}
        types = "; ".join(f"{n} more {t.name}: {t.size()} each" for t, n in self.room)
        return f"{add['CPU']:g} CPUs and {add['GPU']:g} GPUs" + (f" ({types})" if types else "")


def fixed(now: dict[str, float]) -> Capacity:
    return Capacity(now=dict(now), ceiling=dict(now))


# ---- the autoscaler's config ------------------------------------------------------------------------------------
def read_node_types(path: Path) -> tuple[list[NodeType], int | None]:
    """(worker node types, the cluster-wide worker limit or None) from a cluster-launcher config (YAML or JSON) or a
    KubeRay RayCluster/RayJob manifest."""
    where = f"{CONFIG_ENV}={path}"
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    except (OSError, yaml.YAMLError) as exc:
        raise OrchError(f"{where} cannot be read as YAML ({exc}). Point it at the cluster's autoscaler config "
                        "(the YAML of `ray up`, or the RayCluster manifest) or unset it.") from None
    for doc in docs:
        if isinstance(doc.get("available_node_types"), dict):
            return _launcher_types(doc, where)
        spec = doc.get("spec") or {}
        cluster = spec.get("rayClusterSpec") if doc.get("kind") == "RayJob" else spec
        if doc.get("kind") in ("RayCluster", "RayJob") and isinstance(cluster, dict):
            return _kuberay_types(cluster, where), None
    raise OrchError(f"{where} holds neither `available_node_types` (a cluster-launcher config) nor a RayCluster "
                    "manifest. Point it at the cluster's autoscaler config or unset it.")


def _launcher_types(doc: dict[str, Any], where: str) -> tuple[list[NodeType], int | None]:
    head = doc.get("head_node_type")
    types = []
    for name, node in doc["available_node_types"].items():
        if name == head or not isinstance(node, dict):
            continue  # the head is alive already: it counts among the nodes now
        res = node.get("resources") or {}
        types.append(NodeType(name, _number(res.get("CPU", 0), where, f"{name}.resources.CPU"),
                              _number(res.get("GPU", 0), where, f"{name}.resources.GPU"),
                              int(_number(node.get("max_workers", 0), where, f"{name}.max_workers"))))
    limit = doc.get("max_workers")
    return types, None if limit is None else int(_number(limit, where, "max_workers"))


def _kuberay_types(cluster: dict[str, Any], where: str) -> list[NodeType]:
    types = []
    for group in cluster.get("workerGroupSpecs") or []:
        name = str(group.get("groupName", "?"))
        params = group.get("rayStartParams") or {}
        containers = ((group.get("template") or {}).get("spec") or {}).get("containers") or [{}]
        limits = (containers[0].get("resources") or {}).get("limits") or {}
        # KubeRay derives Ray's counts from the container limits unless rayStartParams say otherwise.
        cpus = params.get("num-cpus", limits.get("cpu", 0))
        gpus = params.get("num-gpus", limits.get("nvidia.com/gpu", 0))
        types.append(NodeType(name, _number(cpus, where, f"{name} CPUs"), _number(gpus, where, f"{name} GPUs"),
                              int(_number(group.get("maxReplicas", group.get("replicas", 0)), where,
                                          f"{name}.maxReplicas"))))
    return types


def _number(value: Any, where: str, what: str) -> float:
    text = str(value).strip()
    try:
        number = float(text[:-1]) / 1000 if text.endswith("m") else float(text)  # Kubernetes millicores: "500m"
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0:
        raise OrchError(f"{where}: {what} is {value!r}, not a non-negative number. Fix the config or unset "
                        f"{CONFIG_ENV}.")
    return number


# ---- the ceiling ------------------------------------------------------------------------------------------------
def grow(now: dict[str, float], types: list[NodeType], running: Counter[str], limit: int | None) -> Capacity:
    """The ceiling: alive totals plus, per resource, the most the autoscaler could add with the nodes left.

    Each resource is maximised on its own (biggest nodes first within the cluster-wide limit), so with mixed node
    types the ceiling is an upper bound: a job above it can never start; one below it fits after scale-up.
    """
    room = [(t, max(0, t.max_workers - running.get(t.name, 0))) for t in types]
    room = [(t, n) for t, n in room if n > 0 and (t.cpus or t.gpus)]
    left = math.inf if limit is None else max(0, limit - sum(running.get(t.name, 0) for t in types))
    ceiling = dict(now)
    for key in RESOURCES:
        budget = left
        for node_type, count in sorted(room, key=lambda tn: -(tn[0].cpus if key == "CPU" else tn[0].gpus)):
            take = min(count, budget)
            ceiling[key] += take * (node_type.cpus if key == "CPU" else node_type.gpus)
            budget -= take
    if limit is not None:
        room = [(t, int(min(n, left))) for t, n in room if left > 0]
    missing = tuple(f"node type {t.name} declares no CPU or GPU count" for t in types
                    if not (t.cpus or t.gpus) and t.max_workers)
    return Capacity(now=dict(now), ceiling=ceiling, autoscaler=True, room=tuple(room), unknown=missing)


def autoscaler_report(url: str) -> dict[str, Any] | None:
    """The autoscaler's report from `/api/cluster_status`, or None when no autoscaler runs there."""
    if _no_autoscaler.get(url, 0.0) > time.monotonic():
        return None
    try:
        status = fetch_cluster_status(url)
    except ClusterUnavailable:
        return None  # the node list just answered; a cluster status that does not is no autoscaler to count on
    report = status.get("autoscalerReport")
    if not isinstance(report, dict) or _readonly(report):
        if status:  # Ray's monitor has reported (a head's first seconds have no status yet: ask again next time)
            _no_autoscaler[url] = time.monotonic() + _NO_AUTOSCALER_TTL_S
        return None
    return {**report, "loadMetricsReport": status.get("loadMetricsReport") or {}}


def _readonly(report: dict[str, Any]) -> bool:
    """Whether the report is Ray's monitor mirroring a cluster nobody scales (`ray start` without an autoscaling
    config: its "readonly" provider names every node's type node_<node id>); nothing can be added there."""
    mapping = report.get("nodeTypeMapping") or {}
    return all(kind == f"node_{node_id}" for node_id, kind in mapping.items())


def _running_by_type(url: str, report: dict[str, Any] | None) -> Counter[str]:
    """Alive nodes per node type: the autoscaler's node -> type map (its values are not renamed by the dashboard),
    else KubeRay's `ray.io/node-group` label."""
    mapping = (report or {}).get("nodeTypeMapping") or {}
    counts: Counter[str] = Counter()
    for node in fetch_nodes(url):
        kind = mapping.get(node.get("node_id")) or (node.get("labels") or {}).get("ray.io/node-group")
        if kind:
            counts[str(kind)] += 1
    return counts


def cluster_capacity(url: str, now: dict[str, float]) -> Capacity:
    """`now` (the alive nodes' totals) and what the cluster at `url` can grow to.

    Admission refuses a job above the ceiling; the queue launches up to it, so on an autoscaling cluster a job is
    handed to Ray before its nodes exist: its pending workers are what makes the autoscaler add them."""
    report = autoscaler_report(url)
    if report is None:
        return fixed(now)  # no autoscaler runs there (the embedded cluster, a fixed one): its nodes are all it has
    path = os.environ.get(CONFIG_ENV)
    if not path:
        return Capacity(now=dict(now), ceiling=dict(now), autoscaler=True, unknown=(
            f"it runs an autoscaler, but orch does not know what it can add: set {CONFIG_ENV} to the cluster's "
            "autoscaler config (the YAML of `ray up`, or the RayCluster manifest)",))
    types, limit = read_node_types(Path(path).expanduser())
    return grow(now, types, _running_by_type(url, report), limit)


# ---- what a started job waits for -------------------------------------------------------------------------------
def waiting_note(url: str, need: dict[str, float]) -> str:
    """'waiting for nodes: ...' for a job on `url` whose workers have not started while the autoscaler has demand
    to meet or nodes on the way; '' otherwise (no autoscaler, or nothing pending: the workers are just starting)."""
    report = autoscaler_report(url)
    if report is None:
        return ""
    load = report["loadMetricsReport"]
    starting = sum(int(n) for n in (report.get("pendingLaunches") or {}).values()) + len(
        report.get("pendingNodes") or [])
    if not (load.get("pgDemand") or load.get("resourceDemand") or starting):
        return ""
    usage = load.get("usage") or {}
    now = {key: float((usage.get(key) or (0.0, 0.0))[1]) for key in RESOURCES}
    free = {key: now[key] - float((usage.get(key) or (0.0, 0.0))[0]) for key in RESOURCES}
    try:
        capacity = cluster_capacity(url, now)
    except OrchError:
        capacity = Capacity(now=now, ceiling=now, autoscaler=True)
    return (f"{WAITING}: needs {need['CPU']:g} CPUs and {need['GPU']:g} GPUs, the cluster has {free['CPU']:g} CPUs "
            f"and {free['GPU']:g} GPUs free, its autoscaler can add {capacity.can_add()}"
            + (f"; {starting} node(s) starting" if starting else ""))


def note_waiting_for_nodes(db: JobIndex, rec: JobRecord, store: ObjectStore) -> JobRecord:
    """Keep a started job's message saying what nodes it waits for, until its workers start (their attempt
    record is newer than the launch) or it stops waiting."""
    if rec.kind != "job" or rec.state not in (JobState.STARTING, JobState.RUNNING) or not rec.ray_address:
        return rec
    try:
        note = waiting_note(rec.ray_address, {"CPU": rec.cpus, "GPU": rec.gpus})  # "" at once on a fixed cluster
    except ClusterUnavailable:
        return rec
    if note:  # only then read storage: is this launch's attempt on record (its workers started)?
        started = latest_attempt_start(store)
        note = "" if started and rec.started_at and started >= rec.started_at else note
    if note == rec.message or (not note and not rec.message.startswith(WAITING)):
        return rec
    db.update(rec.id, message=note)
    return db.get(rec.id)
