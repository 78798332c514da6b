"""Free the CPUs and GPUs that a stopped trial's Ray Train controller can leave reserved.

When Tune stops a trial (ASHA, a budget), it kills the trial's actor, and the TorchTrainer controller that actor
owns dies with it. Ray Train's own safety net, the PlacementGroupCleaner, is stopped at the start of the
controller's abort; a controller killed after that but before it removed its workers' placement group leaves
the group behind. Ray removes a placement group that an actor created only once both that actor and its job
are gone, and the job here is the campaign driver, so the group would keep its CPUs until the campaign ends:
the next trials then wait for workers until Ray Train gives up on them.

A placement group whose creating actor is dead can never be used again (its workers died with their
controller), so the campaign driver removes the ones its own job's actors created.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from ray.tune import Callback

REAP_EVERY_S = 5.0


def orphaned_groups(table: Iterable[Any], job_id: bytes) -> list[bytes]:
    """Ids of live, non-detached placement groups created by `job_id` whose creating actor is dead.

    `table` holds GCS PlacementGroupTableData messages, which (unlike ray.util.placement_group_table())
    say who created each group and whether that creator still lives.
    """
    import ray
    from ray.core.generated import gcs_pb2

    removed = gcs_pb2.PlacementGroupTableData.REMOVED
    # A group the driver itself created (Tune's per-trial groups) names the nil actor as its creator, and the GCS
    # counts that creator as dead from the start: those groups live as long as the job and must be left alone.
    by_driver = ray.ActorID.nil().binary()
    return [pg.placement_group_id for pg in table
            if pg.state != removed and not pg.is_detached and pg.creator_job_id == job_id
            and pg.creator_actor_id not in (b"", by_driver) and pg.creator_actor_dead]


def remove_orphaned_groups() -> int:
    """Remove this job's orphaned placement groups; how many were removed."""
    import ray
    from ray._private.state import state  # the GCS table with creator fields; no public API exposes them
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    raw = state._connect_and_get_accessor().get_placement_group_table()
    table = [gcs_pb2.PlacementGroupTableData.FromString(entry) for entry in raw]
    job_id = ray.get_runtime_context().get_job_id()
    orphans = orphaned_groups(table, bytes.fromhex(job_id))
    for group_id in orphans:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID(group_id)))
    return len(orphans)


class OrphanedGroupReaper(Callback):
    """Runs remove_orphaned_groups every few seconds of the Tune loop."""

    def __init__(self) -> None:
        self._last = 0.0
        self._broken = False

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if time.monotonic() - self._last >= REAP_EVERY_S:
            self._reap()

    def _reap(self) -> None:
        self._last = time.monotonic()
        if self._broken:
            return
        try:
            count = remove_orphaned_groups()
        except Exception as exc:  # a private Ray API: if it changes, lose the safety net, not the campaign
            print(f"orch: could not check for orphaned placement groups: {exc}", flush=True)
            self._broken = True
            return
        if count:
            print(f"orch: freed {count} placement group(s) left behind by stopped trials", flush=True)
