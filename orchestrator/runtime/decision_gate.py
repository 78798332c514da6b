"""Trials wait at the scheduler's decision steps, so a trial it stops trains no further.

Workers report to Ray Train without waiting for anyone, and Tune sees a report only after the Train controller has
polled it and the trial thread has handed it on: left alone, a trial that ASHA stops at a rung trains on for
several report intervals before it is torn down. At each decision step (the first report carrying the metric at or
past each rung) rank 0 therefore waits until the trial thread says Tune let the trial go on; every rank follows
rank 0. When Tune stops the trial instead, the trial thread closes the gate and the workers end there.
"""

from __future__ import annotations

# A decision that never comes (a wedged trial process) must not hang the workers for ever: they train on.
DECISION_TIMEOUT_S = 600.0


class DecisionGate:
    """Created by the trial (it owns the queue actor, so the queue dies with the trial); waited on by rank 0."""

    def __init__(self, steps: list[int]):
        from ray.util.queue import Queue

        self.steps = frozenset(steps)
        self._released = Queue(actor_options={"num_cpus": 0})

    def release(self, step: int) -> None:
        """Trial side: Tune took the report of `step` and asked for the next one, so the trial goes on."""
        if step in self.steps:
            self._released.put(step)

    def close(self) -> None:
        """Trial side: Tune stopped or paused the trial; waiting workers end their training here."""
        self._released.shutdown(force=True)

    def wait(self, step: int, timeout_s: float = DECISION_TIMEOUT_S) -> bool:
        """Worker side (rank 0): True when the trial goes on past `step`, False when the scheduler stopped it."""
        from ray.util.queue import Empty

        try:
            while True:
                if self._released.get(timeout=timeout_s) >= step:
                    return True
        except Empty:
            print(f"orch: no scheduler decision about step {step} within {timeout_s:.0f} s; training on", flush=True)
            return True
        except Exception:  # the queue actor is gone: the trial was stopped (or itself died)
            return False
