"""`orch generate DIR` and the refusals of `orch export --format hf` / `orch generate` that need no cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from orchestrator.control import cli
from orchestrator.control.generate import generate_from_dir
from orchestrator.control.hf_export import export_hf
from orchestrator.core.errors import OrchError
from tests.control.test_hf_export import consolidated, gpt_spec, our_gpt


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hf") / "model"
    export_hf(gpt_spec(seq_len=32), consolidated(our_gpt(gpt_spec(seq_len=32))), out)
    return out


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ORCH_HOME", str(tmp_path / "orch-home"))
    monkeypatch.delenv("ORCH_RAY_ADDRESS", raising=False)
    return tmp_path / "orch-home"


def test_greedy_matches_our_models_own_sampler_and_seeded_sampling_repeats(model_dir: Path) -> None:
    from orchestrator.workloads.gpt.data import decode, encode
    from orchestrator.workloads.gpt.generate import generate

    greedy = generate_from_dir(model_dir, "héllo", max_new_tokens=8, temperature=0)
    ours = generate(our_gpt(gpt_spec(seq_len=32)), torch.tensor([encode("héllo")]), 8, temperature=0)[0].tolist()
    assert greedy.tokens == ours[len(encode("héllo")):]
    assert greedy.text == decode(ours) and greedy.text.startswith("héllo")
    first, again = (generate_from_dir(model_dir, "ab", max_new_tokens=10, temperature=1.0, top_k=20, seed=7)
                    for _ in range(2))
    assert first == again and len(first.tokens) == 10
    assert generate_from_dir(model_dir, "ab", max_new_tokens=10, seed=8).tokens != first.tokens


def test_generation_refusals(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(OrchError, match="--prompt is empty"):
        generate_from_dir(model_dir, "")
    with pytest.raises(OrchError, match="context is 32"):
        generate_from_dir(model_dir, "x" * 30, max_new_tokens=5)
    assert len(generate_from_dir(model_dir, "x" * 30, temperature=0).tokens) == 2  # the default fits the context
    with pytest.raises(OrchError, match="not a Hugging Face model directory"):
        generate_from_dir(tmp_path, "hi")
    with pytest.raises(OrchError, match="--temperature"):
        generate_from_dir(model_dir, "hi", temperature=-1)


def refused(capsys: pytest.CaptureFixture[str], argv: list[str], expected: str, code: int = 2) -> None:
    assert cli.main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err and expected in err, err


def test_cli_refusals_before_any_job_lookup(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep").write_text("x")
    refused(capsys, ["export", "no-such-job", "--format", "onnx", "--out", str(tmp_path / "m")], "--format 'onnx'")
    refused(capsys, ["export", "no-such-job", "--format", "hf", "--out", str(full)], "not empty")
    refused(capsys, ["export", "no-such-job", "--format", "hf", "--out", str(full / "keep")], "not a directory")
    refused(capsys, ["export", "no-such-job", "--format", "hf", "--out", str(tmp_path / "m"),
                     "--max-shard-size", "big"], "--max-shard-size 'big'")
    refused(capsys, ["export", "no-such-job", "--out", str(tmp_path / "m.pt"), "--max-shard-size", "1GB"],
            "--format hf")
    refused(capsys, ["generate", "no-such-job", "--prompt", ""], "--prompt is empty")
    refused(capsys, ["generate", "no-such-job", "--prompt", "hi"], "neither a job id nor a model directory", code=3)
    refused(capsys, ["generate", str(tmp_path), "--prompt", "hi"], "not a Hugging Face model directory")
    assert (full / "keep").read_text() == "x" and not (tmp_path / "m").exists() and not (tmp_path / "m.pt").exists()


def test_cli_generate_from_a_directory(model_dir: Path, capsys: pytest.CaptureFixture[str], home: Path) -> None:
    assert cli.main(["generate", str(model_dir), "--prompt", "hé", "--temperature", "0", "--max-new-tokens", "4",
                     "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == generate_from_dir(model_dir, "hé", max_new_tokens=4, temperature=0).as_dict()
    assert cli.main(["generate", str(model_dir), "--prompt", "hé", "--temperature", "0", "--max-new-tokens",
                     "4"]) == 0
    assert capsys.readouterr().out == printed["text"] + "\n"
