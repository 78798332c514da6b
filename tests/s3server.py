"""A real S3 server for tests: `moto_server` in a subprocess on 127.0.0.1.

Fixtures (register with `pytest_plugins = ["tests.s3server"]`):

    s3_server  (session)  -> S3Server: .endpoint_url, .env (AWS_* settings to talk to it),
                             .make_bucket(name), .client() (a raw boto3 client, for assertions),
                             .enforce_credentials() (context manager, see below)
    s3_env     (function) -> "s3://<fresh bucket>/root", with s3_server.env applied via monkeypatch and
                             stray AWS settings of the developer's machine (profiles, ~/.aws) hidden

Like moto's default, the server accepts any credentials, so `.env` holds fixed dummy ones (the secret is
distinctive, so tests can grep for it in messages and logs). Tests about wrong credentials wrap their
calls in `s3_server.enforce_credentials()`: moto then checks signatures against IAM keys it issued
itself, like real S3. It is not on all the time because moto (5.2) then rejects valid requests whose
query string holds a '/' (ListObjectsV2 with Prefix="a/"): it checks the signature against the decoded URL.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

STARTUP_TIMEOUT_S = 60.0
REGION = "us-east-1"
ACCESS_KEY_ID = "testing-key"
SECRET_ACCESS_KEY = "s3cr3t-NEVER-LOG-me"
ADMIN_POLICY = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
)
# Settings that could leak in from the developer's machine and point boto3 somewhere else.
STRAY_AWS_SETTINGS = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3",
    "AWS_REGION", "AWS_CA_BUNDLE", "AWS_REQUEST_CHECKSUM_CALCULATION", "ORCH_S3_ADDRESSING_STYLE",
    "ORCH_STORAGE_RETRIES",
)


@dataclass
class S3Server:
    endpoint_url: str
    env: dict[str, str]

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )

    def make_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    @contextmanager
    def enforce_credentials(self) -> Iterator[tuple[str, str]]:
        """Make the server check credentials; yields a (key id, secret) pair it accepts meanwhile.

        The dummy credentials in `.env` are rejected (InvalidAccessKeyId) while this is active.
        """
        key = _issue_admin_key(self.endpoint_url)
        _set_auth(self.endpoint_url, enforced=True)
        try:
            yield key
        finally:
            _set_auth(self.endpoint_url, enforced=False)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Terminate a server this test started; kill it if it does not exit within 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    """A port nothing listens on right now (also what tests use as an 'unreachable endpoint')."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_serving(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=1):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.05)
    raise RuntimeError(f"moto_server did not answer in {STARTUP_TIMEOUT_S:.0f} s:\n{log_path.read_text()}")


def _issue_admin_key(url: str) -> tuple[str, str]:
    """Create an admin IAM user (while moto still accepts anything) and return its (key id, secret)."""
    iam = boto3.client(
        "iam", endpoint_url=url, region_name=REGION, aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
    )
    user = f"orch-tests-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="admin", PolicyDocument=ADMIN_POLICY)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def _set_auth(url: str, *, enforced: bool) -> None:
    # moto checks credentials once it has served INITIAL_NO_AUTH_ACTION_COUNT requests; this resets both.
    # text/plain: with urllib's default form content type, Flask swallows the body and moto gets "".
    request = urllib.request.Request(
        f"{url}/moto-api/reset-auth", data=b"0" if enforced else b"inf", method="POST",
        headers={"Content-Type": "text/plain"},
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("moto") / "moto_server.log"
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            ["moto_server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    try:
        _wait_until_serving(url, process, log_path)
        yield S3Server(
            endpoint_url=url,
            env={
                "AWS_ENDPOINT_URL": url,
                "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
                "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
                "AWS_DEFAULT_REGION": REGION,
            },
        )
    finally:
        stop_process(process)


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    for name in STRAY_AWS_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    # Hide ~/.aws so a developer's default profile cannot change what the tests talk to.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    s3_server.make_bucket(bucket)
    return f"s3://{bucket}/root"
