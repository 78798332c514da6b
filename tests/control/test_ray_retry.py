"""Transient Ray Jobs API errors are retried: Ray's real client against a real HTTP server on 127.0.0.1 that
answers like a head still starting (500 'try again later', 503) a few times, then like Ray."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import ray

from orchestrator.control.cluster_address import ClusterUnavailable
from orchestrator.control.ray_jobs import RayJobs
from orchestrator.control.ray_retry import RayTransientError, call_with_retry, transient_reason
from orchestrator.core.errors import OrchError

TRY_AGAIN = "No available agent to submit job, please try again later."


class FlakyRay(ThreadingHTTPServer):
    """Answers the first `failures[path kind]` requests of each kind with (status, text), then like Ray."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.failures: dict[str, list[tuple[int, str]]] = {"submit": [], "info": [], "stop": [], "logs": []}
        self.requests: list[str] = []
        self.submitted: dict[str, dict] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FlakyRay

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _answer(self, status: int, body: object) -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _kind(self) -> str:
        if self.path.startswith("/api/version"):
            return "version"
        if self.command == "POST" and self.path.rstrip("/") == "/api/jobs":
            return "submit"
        if self.path.endswith("/stop"):
            return "stop"
        if self.path.endswith("/logs"):
            return "logs"
        return "info"

    def _handle(self) -> None:
        kind = self._kind()
        self.server.requests.append(kind)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if kind == "version":
            return self._answer(200, {"version": "4", "ray_version": ray.__version__, "ray_commit": "x"})
        pending = self.server.failures[kind]
        if pending:
            return self._answer(*pending.pop(0))
        if kind == "submit":
            req = json.loads(body)
            if req["submission_id"] in self.server.submitted:
                return self._answer(400, f"Job with submission_id {req['submission_id']} already exists.")
            self.server.submitted[req["submission_id"]] = req
            return self._answer(200, {"submission_id": req["submission_id"], "job_id": None})
        submission_id = self.path.split("/")[3]
        if submission_id not in self.server.submitted:
            return self._answer(404, f"Job {submission_id} does not exist.")
        if kind == "stop":
            return self._answer(200, {"stopped": True})
        if kind == "logs":
            return self._answer(200, {"logs": "step 1 loss 2.0\n"})
        return self._answer(200, {"type": "SUBMISSION", "submission_id": submission_id, "status": "RUNNING",
                                  "entrypoint": self.server.submitted[submission_id]["entrypoint"],
                                  "message": "running"})

    do_GET = do_POST = _handle


@pytest.fixture
def flaky() -> Iterator[FlakyRay]:
    server = FlakyRay()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _fast_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_RAY_RETRY_S", "20")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", "/nonexistent/token")


def test_submission_is_retried_through_try_again_later_and_5xx_then_succeeds(flaky, capsys) -> None:
    flaky.failures["submit"] = [(500, TRY_AGAIN), (500, TRY_AGAIN), (503, "Service Unavailable")]
    RayJobs(flaky.url).submit("job-1", "python -c pass", {}, {"orch_job_id": "job-1"})
    assert list(flaky.submitted) == ["job-1"]
    assert flaky.requests.count("submit") == 4
    err = capsys.readouterr().err
    # Said once, while waiting, with what it waits for and for how long.
    assert err.count("retrying") == 1
    assert "Ray answered 'try again later'; retrying for up to 20 s (submitting job-1 at http://127.0.0.1:" in err


def test_a_submission_that_got_through_before_its_answer_was_lost_is_not_run_twice(flaky) -> None:
    ray_jobs = RayJobs(flaky.url)
    ray_jobs.submit("job-1", "python -c pass", {}, {})
    flaky.failures["submit"] = [(502, "Bad Gateway")]
    ray_jobs.submit("job-1", "python -c pass", {}, {})  # 502, then 'already exists': Ray has it
    assert list(flaky.submitted) == ["job-1"]


def test_status_stop_and_logs_are_retried(flaky) -> None:
    ray_jobs = RayJobs(flaky.url)
    ray_jobs.submit("job-1", "python -c pass", {}, {})
    flaky.failures.update(info=[(500, "Internal Server Error")] * 2, stop=[(504, "Gateway Timeout")],
                          logs=[(500, TRY_AGAIN)])
    assert ray_jobs.status("job-1") == ("RUNNING", "running")
    assert ray_jobs.logs("job-1") == "step 1 loss 2.0\n"
    ray_jobs.stop("job-1")
    assert flaky.requests.count("info") == 3 and flaky.requests.count("stop") == 2
    assert ray_jobs.status("unknown") == (None, "")  # a 404 is an answer, not retried


def test_a_refusal_is_not_retried(flaky) -> None:
    flaky.failures["submit"] = [(400, "runtime_env: bad field")]
    with pytest.raises(OrchError, match="Ray refused job job-1: .*bad field") as exc:
        RayJobs(flaky.url).submit("job-1", "python -c pass", {}, {})
    assert not isinstance(exc.value, ClusterUnavailable)
    assert flaky.requests.count("submit") == 1


def test_gives_up_after_the_budget_with_a_clear_error_then_fails_fast(flaky, monkeypatch, capsys) -> None:
    monkeypatch.setenv("ORCH_RAY_RETRY_S", "2")
    flaky.failures["submit"] = [(500, TRY_AGAIN)] * 1000
    ray_jobs = RayJobs(flaky.url)
    started = time.monotonic()
    with pytest.raises(RayTransientError) as exc:
        ray_jobs.submit("job-1", "python -c pass", {}, {})
    elapsed = time.monotonic() - started
    assert 2.0 <= elapsed < 8.0
    message = str(exc.value)
    assert "Ray answered 'try again later' for 2 s while submitting job-1" in message
    assert "Nothing about the job changed" in message and "ORCH_RAY_RETRY_S" in message
    assert 3 <= flaky.requests.count("submit") < 20  # backed off, not hammered
    assert "retrying for up to 2 s" in capsys.readouterr().err
    # The cluster just spent a whole budget failing: the next call tries once instead of waiting again ...
    before = flaky.requests.count("submit")
    with pytest.raises(RayTransientError):
        ray_jobs.submit("job-2", "python -c pass", {}, {})
    assert flaky.requests.count("submit") == before + 1
    # ... and once it answers, calls retry again.
    flaky.failures["submit"] = []
    ray_jobs.submit("job-3", "python -c pass", {}, {})
    flaky.failures["submit"] = [(500, TRY_AGAIN)]
    ray_jobs.submit("job-4", "python -c pass", {}, {})
    assert set(flaky.submitted) == {"job-3", "job-4"}


def test_a_cluster_that_is_not_there_yet_is_waited_for(monkeypatch) -> None:
    """Connection refused until the server starts listening: the client is built once it answers."""
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    holder.close()  # nothing listens there now
    server: FlakyRay | None = None

    def start_later() -> None:
        nonlocal server
        time.sleep(1.0)
        server = FlakyRay.__new__(FlakyRay)
        ThreadingHTTPServer.__init__(server, ("127.0.0.1", port), _Handler)
        server.failures, server.requests, server.submitted = {"submit": [], "info": [], "stop": [],
                                                              "logs": []}, [], {}
        server.serve_forever()

    threading.Thread(target=start_later, daemon=True).start()
    try:
        RayJobs(f"http://127.0.0.1:{port}").submit("job-1", "python -c pass", {}, {})
        assert server is not None and list(server.submitted) == ["job-1"]
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()


@pytest.mark.parametrize("exc, transient", [
    (RuntimeError(f"Request failed with status code 500: {TRY_AGAIN}."), True),
    (RuntimeError("Request failed with status code 503: busy."), True),
    (RuntimeError("Request failed with status code 400: bad."), False),
    (ConnectionRefusedError(111, "refused"), True),
    (TimeoutError(), True),
    (ValueError("no"), False),
])
def test_what_counts_as_transient(exc, transient) -> None:
    assert (transient_reason(exc) is not None) is transient


def test_zero_budget_tries_once(monkeypatch) -> None:
    calls = []

    def failing() -> None:
        calls.append(1)
        raise ConnectionRefusedError(111, "refused")

    with pytest.raises(RayTransientError):
        call_with_retry(failing, "testing", budget_s=0)
    assert calls == [1]
