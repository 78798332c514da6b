"""A restore's torch.load maps the file: loading a 256 MiB tensor adds file pages, not anonymous memory."""

from __future__ import annotations

import io
import subprocess
import sys

import torch

from orchestrator.runtime.mapped_loads import mapped_torch_loads

MEASURE = r"""
import sys, torch
from orchestrator.runtime.mapped_loads import mapped_torch_loads

def kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

path, mapped = sys.argv[1], sys.argv[2] == "1"
before = kib("RssAnon")
if mapped:
    with mapped_torch_loads():
        state = torch.load(path, weights_only=True)
        total = float(state["master"].sum())  # every page read while restoring, as a copy into the engine does
    file_pages_after_restore = kib("RssFile")
    assert float(state["master"].sum()) == total  # still readable: the pages fault back in
else:
    state = torch.load(path, weights_only=True)
    total = float(state["master"].sum())
    file_pages_after_restore = 0
print((kib("RssAnon") - before) // 1024, total, file_pages_after_restore // 1024)
"""


def _measure(path: str, mapped: bool) -> tuple[int, int]:
    """(anonymous memory growth, file pages resident after the restore), MiB."""
    out = subprocess.run([sys.executable, "-c", MEASURE, path, "1" if mapped else "0"], capture_output=True,
                         text=True, check=True).stdout.split()
    assert float(out[1]) == 64 * 2**20  # the values are the saved ones
    return int(out[0]), int(out[2])


def test_a_mapped_load_reads_the_file_without_copying_it_into_process_memory(tmp_path):
    path = tmp_path / "optim_states.pt"
    torch.save({"master": torch.ones(64 * 2**20)}, path)  # 256 MiB of fp32
    assert _measure(str(path), mapped=False)[0] >= 250
    anon, file_pages = _measure(str(path), mapped=True)
    assert anon < 32
    assert file_pages < 128  # the 256 MiB read during the restore no longer count in the worker's RSS


def test_file_objects_and_explicit_choices_load_as_before(tmp_path):
    buffer = io.BytesIO()
    torch.save({"x": torch.arange(4)}, buffer)
    buffer.seek(0)
    path = tmp_path / "x.pt"
    torch.save({"x": torch.arange(4)}, path)
    with mapped_torch_loads():
        assert torch.equal(torch.load(buffer, weights_only=True)["x"], torch.arange(4))
        assert torch.equal(torch.load(path, mmap=False, weights_only=True)["x"], torch.arange(4))
        assert torch.equal(torch.load(str(path), weights_only=True)["x"], torch.arange(4))
    assert torch.load.__module__.startswith("torch")  # restored on exit
