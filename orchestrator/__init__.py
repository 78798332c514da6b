"""orch: submit DeepSpeed ZeRO training jobs and tuning campaigns to Ray, with results in S3-compatible storage.

`from orchestrator import Client` is the Python SDK (orchestrator/control/sdk/); it is imported on first use,
so `import orchestrator` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Campaign", "Client", "Job", "JobStatus", "OrchError"]

if TYPE_CHECKING:
    from orchestrator.control.sdk import Campaign, Client, Job, JobStatus
    from orchestrator.core.errors import OrchError


def __getattr__(name: str) -> Any:
    if name in ("Campaign", "Client", "Job", "JobStatus"):
        from orchestrator.control import sdk

        return getattr(sdk, name)
    if name == "OrchError":
        from orchestrator.core.errors import OrchError

        return OrchError
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
