"""The Python SDK (`from orchestrator import Client`): the same operations as the `orch` command, typed."""

from orchestrator.control.generate import Generation, generate_from_dir
from orchestrator.control.sdk.client import Campaign, Client, Job
from orchestrator.control.sdk.types import BestTrial, CheckpointInfo, ExportResult, JobStatus, Trial, VerifyResult

__all__ = ["BestTrial", "Campaign", "CheckpointInfo", "Client", "ExportResult", "Generation", "Job", "JobStatus",
           "Trial", "VerifyResult", "generate_from_dir"]
