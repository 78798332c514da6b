"""memstats measures ZeRO-3 at the end of the whole first update, not after its first sub group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from orchestrator.runtime.host_memory import pin_mmap_threshold
from tests.paths import REPO_ROOT

REPO = REPO_ROOT
EXTENSIONS = Path(os.environ.get("ORCH_TEST_EXTENSIONS_DIR", Path.home() / ".cache" / "orch-torch-extensions"))

# One gloo process, a tiny GPT under ZeRO-3 bf16 with sub groups of ~1/4 of the model.
SCRIPT = r"""
import json, socket, torch, deepspeed
from orchestrator.workloads.gpt.config import GPTModelConfig, param_count
from orchestrator.workloads.gpt.model import GPT
from orchestrator.runtime.memstats import client_steps_per_update, measure_at_first_update
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
import os
os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
deepspeed.init_distributed(dist_backend="gloo")
cfg = GPTModelConfig(n_layer=2, n_head=2, d_model=32, seq_len=16)
ds = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "train_batch_size": 1,
      "bf16": {"enabled": True}, "steps_per_print": 10**9,
      "zero_optimization": {"stage": 3, "sub_group_size": param_count(cfg) // 4,
                            "stage3_param_persistence_threshold": 0}}
with deepspeed.zero.Init(config_dict_or_path=ds):
    model = GPT(cfg)
engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters()), config=ds)
reports = []
measure_at_first_update(engine, reports.append)
x = torch.randint(0, 256, (1, 16))
for _ in range(2):
    _, loss = engine(x, x); engine.backward(loss); engine.step()
print(json.dumps({"params": param_count(cfg), "calls": client_steps_per_update(engine), "reports": reports}))
"""


def test_zero3_update_is_measured_once_after_every_sub_group():
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": str(EXTENSIONS), "PYTHONPATH": str(REPO),
           "LOCAL_SIZE": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, text=True, capture_output=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    params = out["params"]
    assert out["calls"] >= 4  # ZeRO-3 stepped the client optimizer once per sub group
    assert len(out["reports"]) == 1  # one report, for the first update only
    memory = out["reports"][0]
    assert memory["master"] == 4 * params  # every sub group's fp32 partition, not only the last one's
    assert memory["optimizer_states"] >= 8 * params
    # The bf16 gradient partition plus the largest sub group's fp32 gradient (at least a quarter of the model).
    assert 2 * params + 4 * params // 4 <= memory["grads"] < 2 * params + 4 * params // 2


def test_mmap_threshold_is_pinned_on_glibc():
    assert pin_mmap_threshold() is (sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION") is not None)
