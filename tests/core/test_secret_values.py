"""Secrets the env-name rule used to miss: more names, credential-looking values, campaign overrides."""

from __future__ import annotations

import pytest
import yaml

from orchestrator.core.errors import SpecError
from orchestrator.core.spec import parse_spec
from tests.core.test_campaign_spec import campaign, resolve
from tests.paths import REPO_ROOT

MISSED = {
    "DATABASE_URL": "postgres://app:hunter2pw@db:5432/app",
    "MYSQL_PWD": "mysqlpw-123",
    "GPG_PASSPHRASE": "passphrase-123",
    "STRIPE_APIKEY": "sk-apikey-123",
    "SLACK_WEBHOOK_URL": "https://hooks.example.com/services/T0/B0/webhooksecret",
    "SENTRY_DSN": "https://dsnpublic@sentry.example.com/1",
    "AZURE_STORAGE": "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=azurekey123==",
    "REDIS_CONN_STR": "redis://default:redispw@cache:6379",
}


def test_missed_secret_names_and_credential_values_are_secret():
    spec = parse_spec({"name": "x", "workload": "mlp", "env": {**MISSED, "MODE": "fast"}})
    assert set(spec.secret_env()) == {*MISSED, "MODE"}  # every env value is secret, whatever its name
    shown = yaml.safe_dump(spec.redacted())
    assert not [v for v in MISSED.values() if v in shown]
    assert spec.redacted()["env"]["MODE"] == "***redacted***"
    for name, value in MISSED.items():  # nor may they be declared shown
        with pytest.raises(SpecError, match=f"public_env.{name} looks like a secret"):
            parse_spec({"name": "x", "workload": "mlp", "public_env": {name: value}})


def test_campaign_overrides_of_env_in_every_form_are_redacted():
    loaded = resolve(campaign(overrides={"env": {"HF_TOKEN": "hf-secret-1"}, "env.KEY": "key-secret-2",
                                         "env.AUTH_HEADER": "auth-secret-3", "train.steps": 60}))
    stored = yaml.safe_dump(loaded.to_record())
    assert not [s for s in ("hf-secret-1", "key-secret-2", "auth-secret-3") if s in stored]
    assert loaded.base_job.train.steps == 60


def test_credentials_in_set_values_and_data_paths_are_refused_and_never_echoed(tmp_path, monkeypatch, capsys):
    from orchestrator.control import cli

    monkeypatch.setenv("ORCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ORCH_RAY_ADDRESS", raising=False)
    gpt = str(REPO_ROOT / "jobs" / "examples" / "gpt-zero3.yaml")
    for override in ("data.path=s3://AKIAX:pw-sekrit@bucket/tokens.bin", "train.steps=http://u:pw-sekrit@h/",
                     "model.n_layer=AccountKey=pw-sekrit", "deepspeed.zero_stage=mysql://u:pw-sekrit@h"):
        assert cli.main(["submit", gpt, "--set", override]) == 2, override
        err = capsys.readouterr().err
        assert "error:" in err and "sekrit" not in err, err
    assert not (tmp_path / "home" / "jobs.db").exists() or "sekrit" not in (tmp_path / "home" / "jobs.db").read_text(
        errors="replace")
