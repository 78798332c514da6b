"""The Ray token goes only to the address the user named: never along a redirect; plain http to another
machine is warned about."""

from __future__ import annotations

import http.server
import logging
import threading

import pytest

from orchestrator.control import cluster_address
from orchestrator.control.cluster_address import ClusterUnavailable, check_reachable

TOKEN = "ray-token-example-0123456789"


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[str | None] = []
    redirect_to = ""

    def do_GET(self) -> None:  # noqa: N802
        type(self).seen.append(self.headers.get("Authorization"))
        if self.redirect_to:
            self.send_response(307)
            self.send_header("Location", self.redirect_to + self.path)
            self.end_headers()
            return
        body = b'{"version": "x"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _serve(handler: type) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_token_never_follows_a_redirect_to_another_host(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    target = type("Target", (_Recorder,), {"seen": [], "redirect_to": ""})
    other = _serve(target)
    source = type("Source", (_Recorder,), {"seen": [],
                                            "redirect_to": f"http://localhost:{other.server_address[1]}"})
    first = _serve(source)
    try:
        with pytest.raises(ClusterUnavailable, match="redirect"):
            check_reachable(f"http://127.0.0.1:{first.server_address[1]}")
    finally:
        first.shutdown()
        other.shutdown()
    assert source.seen == [f"Bearer {TOKEN}"]
    assert target.seen == []


def test_plain_http_with_a_token_to_another_machine_is_warned_about(monkeypatch, caplog):
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    cluster_address._warned.clear()
    with caplog.at_level(logging.WARNING, logger="orchestrator.control.cluster_address"):
        assert cluster_address.auth_headers("http://10.1.2.3:8265")
        assert cluster_address.auth_headers("http://127.0.0.1:8265")
        assert cluster_address.auth_headers("https://10.1.2.3:8265")
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "10.1.2.3" in warnings[0] and "https" in warnings[0]
    assert TOKEN not in warnings[0]
