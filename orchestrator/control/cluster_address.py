"""Talking to a Ray cluster's dashboard by HTTP: which cluster to use and what resources it has.

Plain HTTP keeps `orch list`/`orch status` fast: no Ray driver is started just to look.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from orchestrator.core.errors import OrchError

log = logging.getLogger(__name__)
_warned: set[str] = set()  # hosts already warned about (plain http with a token)


class ClusterUnavailable(OrchError):
    """The Ray cluster cannot be reached."""


def dashboard_url(address: str) -> str:
    """Accept 'http://host:8265', 'host:8265' or 'ray://host:10001'-style input; return the dashboard URL."""
    address = address.strip().rstrip("/")
    if address.startswith(("http://", "https://")):
        return address
    if "://" in address:
        raise ClusterUnavailable(
            f"Ray address '{address}' is not a dashboard address. Pass the Ray dashboard's HTTP address, "
            "for example --address http://head-node:8265 (the Ray Jobs API lives there)."
        )
    return f"http://{address}"


def is_loopback(url: str) -> bool:
    """A cluster on this machine: its workers can read files we write (e.g. the secrets file)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def runs_on_this_machine(url: str) -> bool:
    """Whether any node of that cluster has one of this machine's IP addresses.

    A loopback address alone does not say so: `kubectl port-forward` or an SSH tunnel to a remote head is
    loopback too, and that cluster cannot read files we write here.
    """
    import psutil  # ships with ray[default]

    mine = {addr.address for addrs in psutil.net_if_addrs().values() for addr in addrs}
    return any(node.get("node_ip") in mine for node in fetch_nodes(url))


def auth_headers(url: str | None = None) -> dict[str, str]:
    """Ray token auth: RAY_AUTH_TOKEN, or the token file Ray itself writes (~/.ray/auth_token). With `url`,
    warn (once per host) when the token would cross the network in clear text."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token")).expanduser()
    if not token and token_file.is_file():
        token = token_file.read_text().strip()
    if token and url is not None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme == "http" and not is_loopback(url) and parts.netloc not in _warned:
            _warned.add(parts.netloc)
            log.warning("The Ray token is sent to %s over plain http, readable by anyone on the network "
                        "path; serve the dashboard over https (or reach it through an SSH tunnel).", parts.netloc)
    return {"Authorization": f"Bearer {token}"} if token else {}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """urllib would send our Authorization header along a redirect, to any host: never follow one."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]  # noqa: ANN001
        return None  # urllib then raises the 3xx as an HTTPError


_opener = urllib.request.build_opener(_NoRedirect)


def _get_json(url: str, timeout: float) -> dict:
    base = url.split("/api")[0]
    check_address = "Check the address (--address or ORCH_RAY_ADDRESS; the dashboard port is usually 8265)"
    request = urllib.request.Request(url, headers=auth_headers(url))
    try:
        with _opener.open(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:
            raise ClusterUnavailable(
                f"{base} answered with a redirect (HTTP {exc.code}) to {exc.headers.get('Location', '?')}; orch "
                "never follows one (it would carry the Ray token elsewhere). Use the final dashboard address."
            ) from None
        if exc.code in (401, 403):
            raise ClusterUnavailable(
                f"The Ray cluster at {base} refused our token (HTTP {exc.code}). Set RAY_AUTH_TOKEN "
                "to the cluster's token (see `ray get-auth-token`)."
            ) from None
        raise ClusterUnavailable(
            f"{base} answered HTTP {exc.code} to a Ray dashboard request, so it is not a Ray dashboard (or not a "
            f"compatible Ray version). {check_address}."
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:  # ValueError: a malformed URL
        reason = getattr(exc, "reason", exc)
        raise ClusterUnavailable(
            f"Cannot reach the Ray cluster at {base} ({reason}). {check_address} and that the cluster is up."
        ) from None
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise ClusterUnavailable(f"{base} answered, but not like a Ray dashboard. {check_address}.")
    return payload


def fetch_nodes(url: str, timeout: float = 10.0) -> list[dict]:
    """Alive nodes with their total resources, from the dashboard's State API."""
    payload = _get_json(f"{url}/api/v0/nodes?limit=1000&detail=false", timeout)
    nodes = payload.get("data", {}).get("result", {}).get("result", [])
    return [n for n in nodes if n.get("state") == "ALIVE"]


def cluster_totals(url: str) -> dict[str, float]:
    """Sum of CPU/GPU over alive nodes; the scheduler's budget."""
    totals = {"CPU": 0.0, "GPU": 0.0}
    for node in fetch_nodes(url):
        for key in totals:
            totals[key] += float(node.get("resources_total", {}).get(key, 0.0))
    return totals


def check_reachable(url: str) -> None:
    _get_json(f"{url}/api/version", timeout=5.0)


def fetch_cluster_status(url: str, timeout: float = 10.0) -> dict:
    """The cluster status Ray's monitor publishes (load metrics, and the autoscaler's report where one runs), with
    the dashboard's camelCase keys; {} before the monitor has published one."""
    status = (_get_json(f"{url}/api/cluster_status", timeout=timeout).get("data") or {}).get("clusterStatus")
    return status if isinstance(status, dict) else {}


def cluster_usage(url: str) -> dict[str, tuple[float, float]]:
    """{resource: (used, total)} as Ray's autoscaler reports it, e.g. {"CPU": (2.0, 2.0)}."""
    usage = fetch_cluster_status(url)["loadMetricsReport"]["usage"]
    return {key: (float(used), float(total)) for key, (used, total) in usage.items()}
