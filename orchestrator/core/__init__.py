"""Shared ground: what both the control plane and the in-cluster runtime stand on.

Specs, the lifecycle, the run contract (what a run leaves in storage and how to read it), the checkpoint
protocol, secrets handling and the pure estimator. Nothing here imports torch, ray or deepspeed at import
time, and nothing here imports `orchestrator.control` or `orchestrator.runtime`.
"""
