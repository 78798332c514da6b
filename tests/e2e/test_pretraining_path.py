"""The pretraining path as README shows it, through the CLI against a real S3 server: a text corpus prepared into
token shards in S3 with a BPE tokenizer trained here, a small llama trained on it under ZeRO-3 on 2 workers, a
worker killed after a committed checkpoint (the same losses as an uninterrupted run), the model exported as a
Hugging Face directory that transformers alone loads in a fresh process (the job's last eval loss on the same
batches), and text generated from the job and from the directory."""

from __future__ import annotations

import json
import os
import signal

import pytest

from orchestrator.workloads.gpt.data import CORPUS_PATH
from orchestrator.workloads.token_stream import open_stream
from tests.control.hf_fresh import load_in_fresh_process
from tests.e2e.conftest import attempts, committed_steps, metrics_rows, wait_for
from tests.s3server import S3Server

pytestmark = [pytest.mark.e2e, pytest.mark.e2e_timeout(900)]

STEPS = 40
RUN = (f"train.steps={STEPS}", "train.warmup_steps=4", "train.eval_every=20", "train.report_every=2",
       "checkpoint.every_steps=10", "checkpoint.keep_latest=0", "failure.max_restarts=1", "model.vocab_size=512",
       "deepspeed.precision=fp32")  # fp32: the export's weights are then exactly the ones the job evaluated


def _losses(root) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics_rows(root) if not r.get("final") and "loss" in r}


def test_prepare_train_kill_resume_export_and_generate(orch, s3_env: str, s3_server: S3Server, tmp_path):
    text = CORPUS_PATH.read_text()[:120_000]
    bucket = s3_env.removeprefix("s3://").split("/")[0]
    s3 = s3_server.client()
    for i in range(3):  # three text files and a JSONL file of paragraphs
        s3.put_object(Bucket=bucket, Key=f"raw/part-{i}.txt", Body=text[i * 30_000:(i + 1) * 30_000].encode())
    paragraphs = [p for p in text[90_000:].split("\n\n") if p.strip()]
    s3.put_object(Bucket=bucket, Key="raw/more.jsonl", Body="".join(json.dumps({"text": p}) + "\n"
                                                                    for p in paragraphs).encode())
    dataset = f"s3://{bucket}/data"
    prepared = json.loads(orch.run("data", "prepare", f"s3://{bucket}/raw", "--out", dataset, "--vocab-size", "512",
                                   "--shard-tokens", "8000", "--json", extra_env=s3_server.env, timeout=300).stdout)
    assert prepared["tokens_val"] > 0 and prepared["tokens_train"] > STEPS * 2 * 8 * 64 // 2

    sets = (*RUN, f"data.path={dataset}")
    job_id, _ = orch.submit("jobs/examples/llama-zero3.yaml", *sets, "name=llama-killed", wait=False,
                            extra_env=s3_server.env)
    reference_id, _ = orch.submit("jobs/examples/llama-zero3.yaml", *sets, "name=llama-reference", wait=False,
                                  extra_env=s3_server.env)
    root = orch.storage / "jobs" / job_id
    wait_for(lambda: (root / "checkpoints").exists() and [s for s in committed_steps(root) if s >= 10],
             timeout=400, what="a committed checkpoint")
    os.kill(json.loads((root / "workers/rank-00001.json").read_text())["pid"], signal.SIGKILL)
    for jid in (job_id, reference_id):
        wait_for(lambda jid=jid: orch.status(jid)["state"] in ("SUCCEEDED", "FAILED"), timeout=700, what="job end")
        assert orch.status(jid)["state"] == "SUCCEEDED", orch.status(jid)["message"]

    restored = attempts(root)[1]["restored_step"]
    assert 10 <= restored < STEPS
    killed, reference = _losses(root), _losses(orch.storage / "jobs" / reference_id)
    assert killed.keys() == reference.keys() and max(killed) == STEPS
    assert all(abs(killed[s] - reference[s]) <= 1e-4 for s in killed), (killed, reference)
    assert killed[STEPS] < killed[2] - 0.5  # it learned from the prepared tokens
    # Forked children wrote each checkpoint's files (background_save.py) while the DeepSpeed engines trained on.
    saves = {r["step"]: r for r in metrics_rows(orch.storage / "jobs" / reference_id) if "checkpoint_stall_s" in r}
    assert sorted(saves) == [10, 20, 30, 40] and all(r["checkpoint_write_s"] > 0 for r in saves.values())
    # Evaluations are timed on their own, outside the training throughput.
    evaluated = [r for r in metrics_rows(root) if "eval_loss" in r and not r.get("final")]
    assert [r["step"] for r in evaluated] == [20, 40] and all(r["eval_time_s"] > 0 for r in evaluated)

    hf_dir = tmp_path / "hf"
    orch.run("export", job_id, "--format", "hf", "--out", str(hf_dir), extra_env=s3_server.env)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in hf_dir.iterdir()}
    # The job's last evaluation: eval_batches val batches per rank, read by the same reader the workers use.
    final = [r for r in metrics_rows(root) if r.get("final")][-1]
    ids, targets = [], []
    for rank in (0, 1):
        stream = open_stream(dataset, 64, 512, seed=0, rank=rank, world_size=2, accumulation=1)
        for i in range(4):  # train.eval_batches of the example
            windows = stream.windows(STEPS, i, 8, "val")
            ids += windows[:, :-1].tolist()
            targets += windows[:, 1:].tolist()
    texts = ["The ship sailed at dawn.", "Naïve café — ünïcode"]
    got = load_in_fresh_process([{"dir": str(hf_dir), "ids": ids, "targets": targets, "logits": False,
                                  "texts": texts}], tmp_path / "fresh")[str(hf_dir)]
    assert got["class"] == "LlamaForCausalLM"
    assert got["target_loss"] == pytest.approx(final["eval_loss"], abs=1e-4)
    assert got["decoded"] == texts and got["eos_token"] == "<|endoftext|>"

    args = ["--prompt", "The ", "--temperature", "0", "--max-new-tokens", "16", "--json"]
    from_job = json.loads(orch.run("generate", job_id, *args, extra_env=s3_server.env).stdout)
    from_dir = json.loads(orch.run("generate", str(hf_dir), *args).stdout)
    assert from_job == from_dir and from_dir["text"].startswith("The ") and len(from_dir["tokens"]) == 16
