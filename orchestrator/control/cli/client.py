"""The SDK client behind every command: the CLI parses and prints, the SDK does the work."""

from __future__ import annotations

import argparse
from typing import Any


def client(args: argparse.Namespace) -> Any:
    from orchestrator.control.sdk import Client

    return Client(address=getattr(args, "address", None))
