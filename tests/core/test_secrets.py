"""The secrets file: private (0600) even when it already existed, and values survive the trip intact."""

from __future__ import annotations

import os
import stat

from orchestrator.core.secrets import SECRETS_FILE_ENV, load_secrets_file, write_secrets_file


def test_secrets_file_is_private_even_if_it_existed(tmp_path, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    stale = tmp_path / "secrets" / "job.env"
    stale.parent.mkdir()
    stale.write_text("old")
    stale.chmod(0o644)
    pem = "-----BEGIN KEY-----\nline=2\n-----END KEY-----"
    path = write_secrets_file(tmp_path / "secrets", "job", {"SSH_PRIVATE_KEY": pem})
    assert path == stale and stat.S_IMODE(path.stat().st_mode) == 0o600
    monkeypatch.setenv(SECRETS_FILE_ENV, str(path))
    monkeypatch.delenv("SSH_PRIVATE_KEY", raising=False)
    load_secrets_file()
    assert os.environ["SSH_PRIVATE_KEY"] == pem  # newlines and '=' survive the trip
