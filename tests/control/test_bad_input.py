"""Bad input is refused: one clear paragraph naming the field and the fix, a non-zero exit, no traceback,
no job record and no storage object.

Most cases call `orchestrator.control.cli.main([...])` in-process (fast); a few at the end run the real CLI as a
subprocess. Refusals that need a live cluster are in tests/e2e/test_refusals.py.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.control import cli
from tests.paths import REPO_ROOT
from tests.s3server import SECRET_ACCESS_KEY, S3Server, free_port

REPO = REPO_ROOT
MLP = str(REPO / "jobs" / "examples" / "mlp-digits.yaml")
GPT = str(REPO / "jobs" / "examples" / "gpt-zero3.yaml")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ORCH_HOME, no cluster address, no cloud settings of the developer's machine."""
    home = tmp_path / "orch-home"
    monkeypatch.setenv("ORCH_HOME", str(home))
    monkeypatch.delenv("ORCH_RAY_ADDRESS", raising=False)
    return home


def job_rows(home: Path) -> int:
    db = home / "jobs.db"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]


def stored_files(home: Path) -> list[Path]:
    return [p for p in (home / "storage").rglob("*") if p.is_file()]


def the_error(stderr: str) -> str:
    """The one error paragraph: the last line; any earlier lines may only be retry notes."""
    assert "Traceback" not in stderr
    *notes, message = stderr.strip().splitlines()
    assert message.startswith("error: "), stderr
    assert all("retrying in" in note for note in notes), stderr
    return message


def refused(capsys: pytest.CaptureFixture[str], home: Path, argv: list[str], *expected: str, code: int = 2) -> str:
    """Run `orch argv`; check the refusal contract and that the message holds every expected phrase."""
    rc = cli.main(argv)
    captured = capsys.readouterr()
    assert rc == code, (rc, captured)
    assert "Traceback" not in captured.out
    message = the_error(captured.err)
    for phrase in expected:
        assert phrase in message, (phrase, message)
    assert job_rows(home) == 0
    assert stored_files(home) == []
    return message


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ---- the spec file itself ------------------------------------------------------------------------------------
def test_malformed_yaml(home, tmp_path, capsys):
    spec = write(tmp_path, "name: x\nworkload: mlp\n  train: [1\n")
    refused(capsys, home, ["submit", spec], "is not valid YAML at line 3", "Fix the syntax")


@pytest.mark.parametrize("text, found", [("- a\n- b\n", "holds a list"), ("42\n", "holds a int"),
                                         ("", "is empty"), ("just words\n", "holds a str")])
def test_yaml_that_is_not_a_mapping(home, tmp_path, capsys, text, found):
    refused(capsys, home, ["submit", write(tmp_path, text)], found, "must hold a YAML mapping")


def test_missing_spec_file(home, tmp_path, capsys):
    refused(capsys, home, ["submit", str(tmp_path / "nope.yaml")], "does not exist", "jobs/examples/")


def test_binary_spec_file(home, tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    refused(capsys, home, ["submit", str(path)], "is not UTF-8 text")


def test_deeply_nested_yaml(home, tmp_path, capsys):
    # Refused by the loader's own bound, not by Python's recursion limit, which torch (among others) raises.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)
    try:
        refused(capsys, home, ["submit", write(tmp_path, "name: x\nworkload: mlp\nmodel: " + "[" * 600 + "]" * 600)],
                "nested too deeply")
    finally:
        sys.setrecursionlimit(limit)


# ---- fields: unknown, mistyped, wrong type, impossible -------------------------------------------------------
SPEC_CASES: dict[str, tuple[str, list[str], tuple[str, ...]]] = {
    # case: (example, --set overrides, phrases the error must contain)
    "unknown top-level field": (MLP, ["epochs=3"], ("field 'epochs': is not a known field", "spelling")),
    "typo in a section": (MLP, ["deepspeed.zero_stge=2"], ("field 'deepspeed.zero_stge': is not a known field",)),
    "typo in the workload's model": (GPT, ["model.n_layers=2"],
                                     ("field 'model.n_layers'", "gpt workload's model section", "n_layer")),
    "typo in the workload's data": (MLP, ["data.val_fraktion=0.5"], ("field 'data.val_fraktion'", "val_fraction")),
    "wrong type (string for int)": (MLP, ["train.steps=abc"], ("field 'train.steps'", "valid integer", "'abc'")),
    "wrong type (list for section)": (MLP, ["scaling=[1, 2]"], ("field 'scaling'", "valid dictionary")),
    "wrong type (model value)": (MLP, ["model.dropout=lots"], ("field 'model.dropout'", "valid number")),
    "negative steps": (MLP, ["train.steps=-5"], ("field 'train.steps'", "greater than or equal to 1")),
    "infinite learning rate": (MLP, ["train.lr=.inf"], ("field 'train.lr'", "finite")),
    "env value not a string": (MLP, ["env={A: [1]}"], ("field 'env.A'", "valid string")),
    "env name not a variable name": (MLP, ["env={'A=B': x}"], ("env name 'A=B' is not a valid environment variable",)),
    "global batch does not divide": (MLP, ["deepspeed.global_batch_size=100"],
                                     ("deepspeed.global_batch_size (100) must equal", "= 64")),
    "raw train_batch_size mismatch": (MLP, ["deepspeed.config={train_batch_size: 100}"],
                                      ("deepspeed.config: train_batch_size (100)", "deepspeed.micro_batch_size")),
    "ZeRO stage 4": (MLP, ["deepspeed.zero_stage=4"], ("field 'deepspeed.zero_stage'", "less than or equal to 3")),
    "seed as a float past 2**53": (MLP, ["train.seed=9007199254740994.0"],
                                   ("field 'train.seed'", "less than or equal to 9007199254740992")),
    "raw ZeRO stage 4": (MLP, ["deepspeed.config={zero_optimization: {stage: 4}}"],
                         ("deepspeed.config.zero_optimization.stage is 4", "0, 1, 2 and 3")),
    "raw zero_optimization not a mapping": (MLP, ["deepspeed.config={zero_optimization: 2}"],
                                            ("deepspeed.config.zero_optimization must be a mapping",)),
    "offload_optimizer without ZeRO": (MLP, ["deepspeed.zero_stage=0", "deepspeed.offload_optimizer=true"],
                                       ("offload_optimizer needs zero_stage 1, 2 or 3",)),
    "offload_param without stage 3": (MLP, ["deepspeed.offload_param=true"], ("offload_param needs zero_stage 3",)),
    "NVMe optimizer offload": (MLP, ["deepspeed.config={zero_optimization: {offload_optimizer: {device: nvme}}}"],
                               ("offload_optimizer.device is 'nvme'", "deepspeed.offload_optimizer: true")),
    "fp16 on CPU": (MLP, ["deepspeed.precision=fp16"], ("fp16 needs a GPU", "bf16 or fp32")),
    "raw fp16 on CPU": (MLP, ["deepspeed.config={fp16: {enabled: true}}"], ("deepspeed.config.fp16.enabled",)),
    "gpus without use_gpu": (MLP, ["scaling.gpus_per_worker=1"], ("gpus_per_worker > 0 needs use_gpu",)),
    "warmup longer than the run": (MLP, ["train.steps=10"], ("warmup_steps (20) is larger than steps (10)",)),
    "L2 penalty with ZeRO-3": (MLP, ["deepspeed.zero_stage=3"], ("train.l1/train.l2", "zero_stage 3")),
    "missing workload": (MLP, ["workload=null"], ("field 'workload'", "valid string")),
    "unknown workload": (MLP, ["workload=resnet"], ("'resnet' is neither a built-in workload (gpt, llama, mlp)",)),
    "workload not module:function": (MLP, ["workload=os.system"], ("'os.system' is neither",)),
    "name with ../": (MLP, ["name=../../etc"], ("field 'name'", "without '..'")),
    "name with /": (MLP, ["name=a/b"], ("field 'name'", "letters, digits")),
    "name with a space": (MLP, ["name=my job"], ("field 'name'",)),
    "name with a shell character": (MLP, ["name=x;rm -rf ~"], ("field 'name'",)),
    "name with a newline": (MLP, ["name='a\\nb'"], ("field 'name'",)),
    "name with non-ASCII": (MLP, ["name=modèle"], ("field 'name'",)),
    "empty name": (MLP, ["name=''"], ("field 'name'",)),
    "name too long": (MLP, ["name=" + "a" * 64], ("field 'name'", "1-63")),
    "storage with credentials": (MLP, [f"storage=s3://AKIA:{SECRET_ACCESS_KEY}@bucket/x"],
                                 ("field 'storage': must not carry credentials",)),
    "storage with an unknown scheme": (MLP, ["storage=ftp://host/x"], ("field 'storage'", "s3://bucket/prefix")),
    "--set without =": (MLP, ["scaling.num_workers"], ("--set 'scaling.num_workers' must look like key.path=value",)),
    "--set with an empty key": (MLP, ["=3"], ("--set '=3' must look like key.path=value",)),
    "--set with an empty path part": (MLP, ["train..steps=3"], ("--set 'train..steps=3'",)),
    "--set into a scalar": (MLP, ["name.first=x"], ("'name' is not a section",)),
}


@pytest.mark.parametrize("case", sorted(SPEC_CASES))
def test_bad_spec_is_refused(home, capsys, case):
    example, overrides, expected = SPEC_CASES[case]
    message = refused(capsys, home, ["submit", example, *[a for s in overrides for a in ("--set", s)]], *expected)
    assert SECRET_ACCESS_KEY not in message


def test_missing_workload_in_the_file(home, tmp_path, capsys):
    refused(capsys, home, ["submit", write(tmp_path, "name: x\n")], "field 'workload': is required")


def test_several_mistakes_are_named_together(home, capsys):
    refused(capsys, home, ["submit", MLP, "--set", "train.stepz=1", "--set", "scaling.num_workers=0"],
            "field 'train.stepz'", "field 'scaling.num_workers'")


# ---- storage and cluster the spec points at ------------------------------------------------------------------
def test_local_storage_path_is_a_file(home, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    refused(capsys, home, ["submit", MLP, "--set", f"storage={blocker}/runs"], "is not a directory")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_data_path_that_was_never_prepared(home, tmp_path, capsys, where, request):
    """A prepared dataset without index.json (never prepared, or unfinished) is refused before anything runs."""
    if where == "local":
        path = tmp_path / "half-prepared"
        (path / "shards").mkdir(parents=True)
        (path / "shards" / "00000-00000.bin").write_bytes(b"\0\0")
        path = str(path)
    else:
        path = request.getfixturevalue("s3_env") + "/corpus"
    refused(capsys, home, ["submit", GPT, "--set", f"data.path={path}"],
            f"field 'data.path': {path} holds no index.json", "orch data prepare")


def test_s3_endpoint_not_answering(home, s3_env, monkeypatch, capsys, s3_server: S3Server):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("ORCH_STORAGE_RETRIES", "1")
    refused(capsys, home, ["submit", MLP, "--set", f"storage={s3_env}"], "is unreachable", "AWS_ENDPOINT_URL")
    assert _bucket_keys(s3_server, s3_env) == []


def test_s3_bucket_missing(home, s3_env, capsys):
    refused(capsys, home, ["submit", MLP, "--set", "storage=s3://no-such-bucket-4711/runs"],
            "bucket 'no-such-bucket-4711' does not exist", "Create it or fix the 'storage' field")


def test_s3_wrong_credentials(home, s3_env, capsys, s3_server: S3Server):
    bucket_only = s3_env.rsplit("/", 1)[0]  # see tests/s3server.py: moto mis-signs prefixed lists with auth on
    with s3_server.enforce_credentials() as (key_id, secret):
        message = refused(capsys, home, ["submit", MLP, "--set", f"storage={bucket_only}"],
                          "does not know the access key id", "AWS_ACCESS_KEY_ID")
        assert SECRET_ACCESS_KEY not in message
        admin = S3Server(s3_server.endpoint_url, {**s3_server.env, "AWS_ACCESS_KEY_ID": key_id,
                                                  "AWS_SECRET_ACCESS_KEY": secret})
        assert _bucket_keys(admin, s3_env) == []


def _bucket_keys(server: S3Server, s3_uri: str) -> list[str]:
    bucket = s3_uri.removeprefix("s3://").split("/")[0]
    return [o["Key"] for o in server.client().list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_ray_address_not_answering(home, capsys):
    refused(capsys, home, ["submit", MLP, "--address", f"http://127.0.0.1:{free_port()}"],
            "Cannot reach the Ray cluster", "--address or ORCH_RAY_ADDRESS")


def test_ray_address_of_something_else(home, capsys, s3_server: S3Server):
    # Something answers HTTP there, but it is not a Ray dashboard.
    refused(capsys, home, ["submit", MLP, "--address", s3_server.endpoint_url], "not a Ray dashboard",
            "Check the address")


def test_ray_client_address_instead_of_dashboard(home, capsys):
    refused(capsys, home, ["submit", MLP, "--address", "ray://head:10001"], "not a dashboard address",
            "http://head-node:8265")


def test_ray_address_checked_before_storage_is_written(home, s3_env, capsys, s3_server: S3Server):
    refused(capsys, home, ["submit", MLP, "--set", f"storage={s3_env}", "--address",
                           f"http://127.0.0.1:{free_port()}"], "Cannot reach the Ray cluster")
    assert _bucket_keys(s3_server, s3_env) == []


# ---- job ids that do not exist -------------------------------------------------------------------------------
UNKNOWN_JOB_COMMANDS: dict[str, Callable[[Path], list[str]]] = {
    "status": lambda tmp: ["status", "no-such-job"],
    "cancel": lambda tmp: ["cancel", "no-such-job"],
    "logs": lambda tmp: ["logs", "no-such-job"],
    "resume": lambda tmp: ["resume", "no-such-job"],
    "export": lambda tmp: ["export", "no-such-job", "--out", str(tmp / "model.pt")],
    "verify": lambda tmp: ["verify", "no-such-job"],
    "checkpoints": lambda tmp: ["checkpoints", "no-such-job"],
}


@pytest.mark.parametrize("command", sorted(UNKNOWN_JOB_COMMANDS))
def test_unknown_job_id(home, tmp_path, capsys, command):
    refused(capsys, home, UNKNOWN_JOB_COMMANDS[command](tmp_path), "No job or campaign with id 'no-such-job'",
            "orch list", code=3)
    assert not (tmp_path / "model.pt").exists()


# ---- the real CLI, as a user runs it -----------------------------------------------------------------------------
def run_orch(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=120)


def assert_cli_refused(proc: subprocess.CompletedProcess[str], home: Path, code: int, *expected: str) -> None:
    assert proc.returncode == code, proc
    message = the_error(proc.stderr)
    for phrase in expected:
        assert phrase in message, (phrase, message)
    assert job_rows(home) == 0 and stored_files(home) == []


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    import os

    return {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ORCH_"))},
            "ORCH_HOME": str(tmp_path / "orch-home")}


@pytest.mark.e2e
def test_cli_malformed_yaml_and_bad_set(cli_env, tmp_path):
    home = Path(cli_env["ORCH_HOME"])
    assert_cli_refused(run_orch(cli_env, "submit", write(tmp_path, "name: [x\n")), home, 2, "is not valid YAML")
    assert_cli_refused(run_orch(cli_env, "submit", MLP, "--set", "deepspeed.zero_stge=1"), home, 2,
                       "field 'deepspeed.zero_stge': is not a known field")


@pytest.mark.e2e
def test_cli_unknown_job_and_dead_ray_address(cli_env):
    home = Path(cli_env["ORCH_HOME"])
    assert_cli_refused(run_orch(cli_env, "status", "no-such-job"), home, 3, "No job or campaign")
    assert_cli_refused(run_orch(cli_env, "logs", "no-such-job"), home, 3, "No job or campaign")
    dead = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    assert_cli_refused(run_orch(cli_env, "submit", MLP, "--address", dead), home, 2, "Cannot reach the Ray cluster")
    assert time.monotonic() - started < 30
    assert_cli_refused(run_orch({**cli_env, "ORCH_RAY_ADDRESS": dead}, "submit", MLP), home, 2,
                       "Cannot reach the Ray cluster")


@pytest.mark.e2e
def test_cli_s3_endpoint_not_answering_with_default_retries(cli_env, s3_server: S3Server):
    home = Path(cli_env["ORCH_HOME"])
    bucket = "bad-input-unreachable"
    s3_server.make_bucket(bucket)
    env = {**cli_env, **s3_server.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    started = time.monotonic()
    proc = run_orch(env, "submit", MLP, "--set", f"storage=s3://{bucket}/runs")
    assert time.monotonic() - started < 60  # bounded retries, then a clear answer
    assert_cli_refused(proc, home, 2, "is unreachable", "AWS_ENDPOINT_URL")
    assert SECRET_ACCESS_KEY not in proc.stderr
    assert s3_server.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_logs_of_a_job_no_ray_cluster_has(home, capsys):
    from orchestrator.control.index import JobIndex, JobRecord
    from orchestrator.core.states import JobState

    # E.g. found by `orch sync` after its cluster went away: we must not ask whichever Ray runs on this machine.
    JobIndex(home / "jobs.db").insert(JobRecord(id="lost-1", name="lost", state=JobState.FAILED,
                                                storage_uri="file:///data/jobs/lost-1", spec={}, ray_address=None))
    assert cli.main(["logs", "lost-1"]) == 2
    message = the_error(capsys.readouterr().err)
    assert "Job lost-1 has no Ray logs" in message and "file:///data/jobs/lost-1" in message
