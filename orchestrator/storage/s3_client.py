"""The boto3 S3 client every S3Store of a process shares, built from the standard AWS settings.

Building a client parses botocore's endpoint and service-model JSON files: ~0.1 CPU-second each time. Stores are
opened per operation in long-lived processes (the background scheduler reconciles every job every second), so
building a client per store cost the scheduler a tenth of a core while a job trained. One client per process and
AWS settings instead: boto3's low-level clients are thread-safe, and a change to any AWS_* variable or to the AWS
config and credentials files builds a new one, so a store always uses the settings in force when it is opened.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.configprovider import ConfiguredEndpointProvider

from orchestrator.storage.base import StorageError

ADDRESSING_ENV = "ORCH_S3_ADDRESSING_STYLE"
ADDRESSING_STYLES = ("path", "virtual", "auto")
DEFAULT_REGION = "us-east-1"

_clients: dict[str, Any] = {}
_lock = threading.Lock()


def resolve_addressing_style(setting: str | None, custom_endpoint: bool) -> str:
    """ORCH_S3_ADDRESSING_STYLE, else 'path' for custom endpoints (MinIO & co rarely have wildcard DNS)."""
    if setting:
        style = setting.strip().lower()
        if style not in ADDRESSING_STYLES:
            raise StorageError(
                f"{ADDRESSING_ENV}={setting!r} is not valid. Set it to one of: "
                f"{', '.join(ADDRESSING_STYLES)}."
            )
        return style
    return "path" if custom_endpoint else "auto"


def settings_fingerprint() -> str:
    """A digest of everything a client is built from: the AWS_* and ORCH_S3_* variables and the AWS files'
    identity. A digest, so the cache's keys hold no secret; the pid, so a forked child builds its own client
    rather than sharing its parent's sockets."""
    env = sorted((k, v) for k, v in os.environ.items() if k.startswith(("AWS_", "ORCH_S3_")))
    files = []
    for name, default in (("AWS_CONFIG_FILE", "~/.aws/config"), ("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials")):
        path = Path(os.path.expanduser(os.environ.get(name, default)))
        try:
            stat = path.stat()
            files.append((str(path), stat.st_mtime_ns, stat.st_size))
        except OSError:
            files.append((str(path), None, None))
    return hashlib.sha256(repr((os.getpid(), env, files)).encode()).hexdigest()


def shared_client() -> Any:
    """This process's S3 client for the AWS settings in force now (built on first use)."""
    key = settings_fingerprint()
    with _lock:
        client = _clients.get(key)
        if client is None:
            _clients.clear()  # settings changed: the old client will not be asked for again
            client = _clients[key] = make_client()
        return client


def make_client() -> Any:
    core = botocore.session.Session()
    session = boto3.session.Session(botocore_session=core)
    endpoint = ConfiguredEndpointProvider(
        full_config=core.full_config, scoped_config=core.get_scoped_config(), client_name="s3"
    ).provide()
    style = resolve_addressing_style(os.environ.get(ADDRESSING_ENV), custom_endpoint=endpoint is not None)
    options: dict[str, Any] = {}
    if not os.environ.get("AWS_REQUEST_CHECKSUM_CALCULATION"):
        # boto3 >= 1.36 adds CRC checksums to every upload by default, which several S3-compatible
        # servers (older MinIO and Ceph RGW, some R2/rclone versions) reject; send them only when an
        # operation requires one, unless the user chose otherwise.
        options["request_checksum_calculation"] = "when_required"
    config = Config(
        # botocore retries once on its own; with_retries does the real, bounded, logged backoff. (In this
        # dict "max_attempts" would count retries only; "total_max_attempts" counts the first try too.)
        retries={"total_max_attempts": 2, "mode": "standard"},
        connect_timeout=10,
        # A server may take minutes to answer during a multi-GB upload: servers that keep objects on a local disk
        # join all parts of a CompleteMultipartUpload before answering, and their disk writes queue behind the
        # writeback of a checkpoint's local save. At 60 s, a 6 GB checkpoint file of a 1B-parameter job got no
        # answer in time from a disk-backed server on the same machine and was uploaded again from the start.
        read_timeout=180,
        s3={"addressing_style": style},
        **options,
    )
    region = os.environ.get("AWS_REGION") or session.region_name or DEFAULT_REGION
    return session.client("s3", region_name=region, config=config)
