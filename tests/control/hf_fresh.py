"""Load Hugging Face exports the way anyone given the directory would: a fresh Python process, a clean
environment and working directory, transformers only (it fails if anything imports orchestrator)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

SCRIPT = r"""
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

jobs = json.loads(open(sys.argv[1]).read())
results = {}
for job in jobs:
    model = AutoModelForCausalLM.from_pretrained(job["dir"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(job["dir"])
    ids = torch.tensor(job["ids"])
    with torch.no_grad():
        out = model(ids, labels=ids)
    texts = job.get("texts", [])
    if "targets" in job:  # next-token targets, as a training loop scores them
        targets = torch.tensor(job["targets"])
        nll = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1).float(), targets.flatten())
    results[job["dir"]] = {
        "class": type(model).__name__,
        "logits": out.logits.tolist() if job.get("logits", True) else None,
        "target_loss": nll.item() if "targets" in job else None,
        "loss": out.loss.item(),
        "encoded": [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts],
        "decoded": [tokenizer.decode(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts],
        "eos_token": tokenizer.eos_token,
        "eos_token_id": model.config.eos_token_id,
    }
assert not any(m == "orchestrator" or m.startswith("orchestrator.") for m in sys.modules), "imported our code"
print(json.dumps(results))
"""


def load_in_fresh_process(jobs: list[dict[str, Any]], workdir: Path) -> dict[str, Any]:
    """Each job: {"dir", "ids" (batch of token id lists), "texts", optional "targets" and "logits": false};
    returns per dir the logits, loss (and target_loss: cross-entropy against targets), tokenizer use."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "jobs.json").write_text(json.dumps(jobs))
    (workdir / "load.py").write_text(SCRIPT)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "load.py", "jobs.json"], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
