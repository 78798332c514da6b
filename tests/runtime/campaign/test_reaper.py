"""Placement groups left behind by killed trial controllers are found and removed, and only those:
never a live actor's, another job's, or the driver's own (Tune's per-trial groups)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap

import pytest
from ray.core.generated import gcs_pb2

from orchestrator.runtime.campaign.reaper import orphaned_groups
from tests.paths import REPO_ROOT

REPO = REPO_ROOT
OURS, OTHER_JOB = bytes.fromhex("0c000000"), bytes.fromhex("0d000000")
ACTOR = bytes(16)[:-1] + b"\x01"


def group(pid: int, *, job: bytes = OURS, actor: bytes = ACTOR, actor_dead: bool = True, detached: bool = False,
          state: int = gcs_pb2.PlacementGroupTableData.CREATED) -> gcs_pb2.PlacementGroupTableData:
    return gcs_pb2.PlacementGroupTableData(placement_group_id=bytes([pid]) * 18, creator_job_id=job,
                                           creator_actor_id=actor, creator_actor_dead=actor_dead,
                                           is_detached=detached, state=state)


def test_only_live_groups_of_this_job_whose_creating_actor_died_are_orphans():
    table = [
        group(1),                                                       # orphan
        group(2, state=gcs_pb2.PlacementGroupTableData.PENDING),        # orphan still waiting for resources
        group(3, actor_dead=False),                                     # its controller is alive: in use
        group(4, job=OTHER_JOB),                                        # another job's
        group(5, detached=True),                                        # outlives its creator on purpose
        group(6, state=gcs_pb2.PlacementGroupTableData.REMOVED),        # already gone
        group(7, actor=b""),                                            # no creator recorded
        group(8, actor=b"\xff" * 16),                                   # created by the driver (nil actor id),
    ]                                                                   # which the GCS marks "dead" from the start
    assert orphaned_groups(table, OURS) == [bytes([1]) * 18, bytes([2]) * 18]


def run_on_fresh_ray(script: str) -> dict:
    """Run `script` as a Ray driver on a Ray instance of its own (it calls ray.init); its last stdout line, as JSON."""
    with tempfile.TemporaryDirectory(prefix="orch-reap-", dir="/tmp") as ray_tmp:
        proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, text=True, capture_output=True, timeout=180,
                              env={"PATH": "/usr/bin:/bin", "RAY_TMPDIR": ray_tmp, "PYTHONPATH": str(REPO),
                                   "RAY_USAGE_STATS_ENABLED": "0", "HOME": ray_tmp})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


PROBE = textwrap.dedent("""
    import json, time
    import ray
    from ray.util.placement_group import PlacementGroup, placement_group
    from orchestrator.runtime.campaign.reaper import remove_orphaned_groups

    ray.init(num_cpus=3, include_dashboard=False)

    @ray.remote(num_cpus=0)
    class Controller:  # stands in for a Ray Train controller: it reserves its workers' CPUs
        def reserve(self):
            pg = placement_group([{"CPU": 1}])
            ray.get(pg.ready())
            return pg.id.binary()

    def state(pg_id):
        return ray.util.placement_group_table(PlacementGroup(ray.PlacementGroupID(pg_id)))["state"]

    alive = Controller.remote()
    kept = ray.get(alive.reserve.remote())
    by_driver = placement_group([{"CPU": 0.5}])  # like Tune's per-trial groups
    ray.get(by_driver.ready())
    killed = Controller.remote()
    leaked = ray.get(killed.reserve.remote())
    ray.kill(killed)
    deadline = time.monotonic() + 30
    while remove_orphaned_groups() == 0:  # 0 until the GCS has marked the killed actor dead
        assert time.monotonic() < deadline, "the killed actor's group was never found"
        time.sleep(0.2)
    while ray.available_resources().get("CPU", 0.0) < 1.5:  # the freed CPU reaches the resource view shortly
        assert time.monotonic() < deadline, "the leaked group's CPU was never freed"
        time.sleep(0.2)
    print(json.dumps({"leaked": state(leaked), "kept": state(kept), "by_driver": state(by_driver.id.binary()),
                      "free_cpus": ray.available_resources()["CPU"], "again": remove_orphaned_groups()}))
""")


@pytest.mark.e2e
def test_group_of_a_killed_actor_is_removed_and_a_live_ones_kept():
    # Ray itself keeps the killed actor's group (and its CPU) until the whole job ends.
    assert run_on_fresh_ray(PROBE) == {
        "leaked": "REMOVED", "kept": "CREATED", "by_driver": "CREATED", "free_cpus": 1.5, "again": 0}


IN_TUNE = textwrap.dedent("""
    import json, os, time
    import ray
    from ray import tune
    from orchestrator.runtime.campaign.reaper import OrphanedGroupReaper

    ray.init(num_cpus=2, include_dashboard=False)

    def trial(config):
        from ray.util.placement_group import PlacementGroup, placement_group

        @ray.remote(num_cpus=0)
        class Controller:
            def reserve(self):
                pg = placement_group([{"CPU": 1}])
                ray.get(pg.ready())
                return pg.id.binary()

        controller = Controller.remote()
        group = ray.get(controller.reserve.remote())
        ray.kill(controller)  # as when Tune stops a trial mid-abort
        deadline = time.monotonic() + 40
        while True:
            state = ray.util.placement_group_table(PlacementGroup(ray.PlacementGroupID(group)))["state"]
            if state == "REMOVED" or time.monotonic() > deadline:
                break
            tune.report({"state": state})
            time.sleep(0.5)
        tune.report({"state": state})

    results = tune.Tuner(tune.with_resources(trial, {"cpu": 0, "memory": 2**27}),
                         run_config=tune.RunConfig(callbacks=[OrphanedGroupReaper()], verbose=0,
                                                   storage_path=os.environ["RAY_TMPDIR"] + "/tune")).fit()
    print(json.dumps({"trial": results[0].metrics["state"], "errors": results.num_errors}))
""")


@pytest.mark.e2e
def test_reaper_runs_in_the_tune_loop_while_trials_run():
    # The trial's own Tune group (created by the driver) survived: the trial finished without error.
    assert run_on_fresh_ray(IN_TUNE) == {"trial": "REMOVED", "errors": 0}
