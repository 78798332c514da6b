"""`orch spec` documents every field from where it is declared."""

import json

from orchestrator.control.cli import main
from orchestrator.core.spec import JobSpec


def test_every_job_spec_field_has_a_description(capsys):
    assert main(["spec", "--json"]) == 0
    docs = json.loads(capsys.readouterr().out)
    assert [row["field"] for row in docs["job"]] == list(JobSpec.model_fields)
    undocumented = [f"{section}.{row['field']}" for section, rows in docs.items() for row in rows
                    if not row["description"]]
    assert undocumented == []
    deepspeed = {row["field"]: row for row in docs["deepspeed"]}
    assert deepspeed["zero_stage"]["default"] == 2
    assert deepspeed["precision"]["type"] == "fp32 | bf16 | fp16"


def test_a_workload_shows_its_model_and_data_sections(capsys):
    assert main(["spec", "gpt", "--json"]) == 0
    docs = json.loads(capsys.readouterr().out)
    assert set(docs) == {"gpt.model", "gpt.data"}
    assert {row["field"] for row in docs["gpt.model"]} >= {"n_layer", "d_model", "seq_len", "vocab_size"}
    assert main(["spec", "llama", "--json"]) == 0
    docs = json.loads(capsys.readouterr().out)
    assert set(docs) == {"llama.model", "llama.data"}
    assert {row["field"] for row in docs["llama.model"]} >= {"n_kv_head", "d_ff", "rope_theta", "tie_embeddings"}
    assert all(row["description"] for section in docs.values() for row in section)


def test_an_unknown_section_is_refused_with_the_choices(capsys):
    assert main(["spec", "optimiser"]) == 2
    err = capsys.readouterr().err
    assert "'optimiser'" in err and "deepspeed" in err and "gpt, llama, mlp" in err
