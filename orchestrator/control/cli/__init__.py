"""The `orch` command: argument parsing and terminal output only; the work happens in the control plane."""

from orchestrator.control.cli.main import main

__all__ = ["main"]
