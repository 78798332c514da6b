"""`orch ui [--host 127.0.0.1] [--port 8765]`: serve the local read-only page until Ctrl-C."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from rich.console import Console

from orchestrator.control.cli.client import client

err = Console(stderr=True, highlight=False, soft_wrap=True)


def cmd_ui(args: argparse.Namespace) -> int:
    from orchestrator.control.ui.server import serve

    server = serve(client(args), args.host, args.port)
    host, port = server.server_address[:2]
    url = f"http://{host}:{port}/"
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        err.print(f"[yellow]note:[/] listening on {args.host}: anyone who can reach this machine can read your "
                  "jobs' specs and metrics.")
    err.print(f"orch ui: {url} (read-only; Ctrl-C stops it)")
    print(url, flush=True)  # the address last on stdout, as other commands print the id
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    sys.stdout.flush()
    return 0


def register(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("ui", cmd_ui, "Serve a local read-only web page: jobs, campaigns, live curves, checkpoints, leaderboard.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
