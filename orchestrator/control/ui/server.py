"""`orch ui`: a small local, read-only web page over the job index and storage.

    GET /                                      the page (orchestrator/control/ui/page.py)
    GET /api/jobs                              every job and campaign: state, latest metrics
    GET /api/jobs/ID                           one job: status, spec, result, checkpoints
                                               (a campaign: trials, leaderboard)
    GET /api/jobs/ID/metrics?after=S&wait=T    metric rows after step S; waits up to T s (<= 20) for new ones
        &trial=TRIAL                           (a campaign's trial)

Nothing here writes: it reads the index (kept current by the background scheduler while work runs) and what
runs left in storage, through the SDK. Bound to 127.0.0.1 unless `--host` says otherwise.
"""

from __future__ import annotations

import json
import math
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from orchestrator.control.sdk import Client
from orchestrator.core.errors import NotFoundError, OrchError

MAX_WAIT_S = 20.0
POLL_S = 0.5


def _clean(value: Any) -> Any:
    """JSON without NaN/inf (browsers' JSON.parse rejects them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class Api:
    """The page's data, from one SDK client (this command's ORCH_HOME)."""

    def __init__(self, client: Client):
        self.client = client  # the index opens a connection per call, so the server's threads can share it

    def jobs(self) -> list[dict[str, Any]]:
        return [s.as_dict() for s in self.client.jobs(refresh=False)]

    def job(self, job_id: str) -> dict[str, Any]:
        job = self.client.job(job_id)
        status = self.client._status(job.record())
        data: dict[str, Any] = {"status": status.as_dict(), "tracking": status.tracking}
        if status.kind == "campaign":
            from orchestrator.core.campaign_summary import leaderboard

            summary = job.summary(refresh=False)  # type: ignore[attr-defined]
            data.update(metric=summary["metric"], mode=summary["mode"], best_trial=summary["best_trial"],
                        trials=summary["trials"], leaderboard=leaderboard(summary["trials"], summary["mode"]),
                        counts=summary["counts"])
            return data
        data["spec"] = job.record().spec
        data["result"] = job.result()
        data["checkpoints"] = [c.as_dict() for c in job.checkpoints()]
        return data

    def metrics(self, job_id: str, after: int, wait_s: float, trial: str | None) -> dict[str, Any]:
        job = self.client.job(job_id)
        deadline = time.monotonic() + min(max(wait_s, 0.0), MAX_WAIT_S)
        while True:
            try:
                rows = job.metrics(trial=trial) if trial else job.metrics()
            except NotFoundError:
                rows = []
            new = [r for r in rows if isinstance(r.get("step"), int) and (r["step"] > after or
                                                                          (r.get("final") and r["step"] >= after))]
            state = job.record().state.value
            if new or time.monotonic() >= deadline or state in ("SUCCEEDED", "FAILED", "CANCELLED"):
                return {"rows": new, "state": state}
            time.sleep(POLL_S)


def make_handler(api: Api) -> type[BaseHTTPRequestHandler]:
    from orchestrator.control.ui.page import PAGE

    class Handler(BaseHTTPRequestHandler):
        server_version = "orch-ui"

        def log_message(self, format: str, *args: Any) -> None:  # quiet: the terminal shows only the address
            return

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            url = urlparse(self.path)
            parts = [unquote(p) for p in url.path.strip("/").split("/") if p]
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            try:
                if not parts:
                    self._send(200, PAGE.encode(), "text/html; charset=utf-8")
                elif parts == ["api", "jobs"]:
                    self._json(200, api.jobs())
                elif len(parts) == 3 and parts[:2] == ["api", "jobs"]:
                    self._json(200, api.job(parts[2]))
                elif len(parts) == 4 and parts[:2] == ["api", "jobs"] and parts[3] == "metrics":
                    after = int(query.get("after", "-1"))
                    wait_s = float(query.get("wait", "0"))
                    self._json(200, api.metrics(parts[2], after, wait_s, query.get("trial") or None))
                else:
                    self._json(404, {"error": f"no such page: {url.path}"})
            except NotFoundError as exc:
                self._json(404, {"error": str(exc)})
            except (OrchError, ValueError) as exc:
                self._json(400, {"error": str(exc)})
            except (BrokenPipeError, ConnectionResetError):
                return  # the browser went away mid-answer

        def _json(self, code: int, data: Any) -> None:
            self._send(code, json.dumps(_clean(data)).encode(), "application/json")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            # Read-only and local: no other site may frame it or script against it.
            self.send_header("X-Frame-Options", "DENY")
            self.send_header("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline' 'self'; "
                             "style-src 'unsafe-inline' 'self'; img-src 'self' data:")
            self.end_headers()
            self.wfile.write(body)

    return Handler


def serve(client: Client, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    """A started-but-not-serving server (call serve_forever); port 0 picks a free one."""
    try:
        server = ThreadingHTTPServer((host, port), make_handler(Api(client)))
    except OSError as exc:
        raise OrchError(f"--port {port}: cannot listen on {host}:{port} ({exc.strerror}). Pick another port with "
                        "--port, or stop what uses it.") from None
    server.daemon_threads = True
    return server
