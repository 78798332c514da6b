"""`orch export` to safetensors streams the consolidation: a real ZeRO-3 checkpoint of a ~46M-parameter model is
exported in a fresh process whose peak resident memory grows by well under two copies of the fp32 model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from orchestrator.core import checkpoints as ck
from orchestrator.storage import open_store
from tests.paths import REPO_ROOT

EXTENSIONS = Path(os.environ.get("ORCH_TEST_EXTENSIONS_DIR", Path.home() / ".cache" / "orch-torch-extensions"))
TAG = "step-000001"

# One gloo process, ZeRO-3, fp32, a tied embedding/head and many equal layers (no tensor is a big part of it).
SAVE = r"""
import json, os, socket, sys, torch, deepspeed
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
deepspeed.init_distributed(dist_backend="gloo")

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(4096, 1024)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(1024, 1024) for _ in range(40))
        self.head = torch.nn.Linear(1024, 4096, bias=False)
        self.head.weight = self.emb.weight
    def forward(self, ids):
        x = self.emb(ids)
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.head(x).float().pow(2).mean()

torch.manual_seed(0)
model = Net()
params = sum(p.numel() for p in model.parameters())  # before ZeRO-3 partitions them (tied: counted once)
ds = {"train_micro_batch_size_per_gpu": 1, "train_batch_size": 1, "steps_per_print": 10**9,
      "zero_optimization": {"stage": 3}}
engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters()), config=ds)
loss = engine(torch.randint(0, 4096, (1, 8))); engine.backward(loss); engine.step()
engine.save_checkpoint(sys.argv[1], tag=sys.argv[2], save_latest=False)
with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
    sample = {k: v.detach().clone() for k, v in engine.module.state_dict().items()
              if k in ("emb.weight", "layers.7.weight", "layers.39.bias")}
torch.save(sample, os.path.join(sys.argv[1], "sample.pt"))
print(json.dumps({"params": params}))
"""

# A fresh process: everything imported first, so the peak growth measured is the export's own.
EXPORT = r"""
import json, sys
import torch, safetensors.torch, deepspeed.utils.zero_to_fp32
from pathlib import Path
from orchestrator.control.export import open_consolidated, save_state_dict
from orchestrator.storage import open_store

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

store = open_store(sys.argv[1]).child("jobs/j")
before = hwm()
with open_consolidated(store, 1) as state:
    save_state_dict(state, Path(sys.argv[2]), "safetensors")
print(json.dumps({"before": before, "after": hwm()}))
"""


def _env() -> dict[str, str]:
    return {**os.environ, "DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": str(EXTENSIONS),
            "PYTHONPATH": str(REPO_ROOT), "LOCAL_SIZE": "1"}


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    root = tmp_path_factory.mktemp("memory")
    saved = root / "saved"
    proc = subprocess.run([sys.executable, "-c", SAVE, str(saved), TAG], cwd=REPO_ROOT, env=_env(), text=True,
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    params = json.loads(proc.stdout.strip().splitlines()[-1])["params"]
    store = open_store(str(root / "storage")).child("jobs/j")
    entries = []
    for path in sorted(p for p in (saved / TAG).rglob("*") if p.is_file()):
        rel = path.relative_to(saved / TAG).as_posix()
        store.put_file(f"{ck.step_prefix(1)}/{rel}", path)
        entries.append(ck.file_entry(path, rel))
        path.unlink()  # the store holds the only copy: less disk
    ck.write_rank_part(store, 1, 0, entries)
    assert ck.try_commit(store, 1, 1, {"loss": 1.0}, "spec-hash") is not None
    return root, saved / "sample.pt", params


def test_streamed_safetensors_export_grows_peak_memory_by_well_under_two_model_copies(stored):
    root, sample, params = stored
    out = root / "model.safetensors"
    proc = subprocess.run([sys.executable, "-c", EXPORT, str(root / "storage"), str(out)], cwd=REPO_ROOT,
                          env=_env(), text=True, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hwm = json.loads(proc.stdout.strip().splitlines()[-1])
    model_bytes = 4 * params
    ratio = (hwm["after"] - hwm["before"]) / model_bytes
    print(f"peak growth {ratio:.2f}x of the fp32 model ({model_bytes / 2**20:.0f} MiB)")
    # Holding the consolidated dict (and a copy to save it) is >= 2x; streaming is the mapped shards plus a tensor.
    assert ratio < 1.5
    expected = torch.load(sample, weights_only=True)
    with safe_open(str(out), "pt") as f:
        assert len(list(f.keys())) == 82  # 40 weights + 40 biases + the tied embedding/head, each by name
        for name, tensor in expected.items():
            assert torch.equal(f.get_tensor(name), tensor)
        assert torch.equal(f.get_tensor("head.weight"), expected["emb.weight"])
