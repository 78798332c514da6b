"""The registry is the only place that knows which workloads exist and what each one is."""

import torch

from orchestrator.core.spec import load_spec_file
from orchestrator.workloads import BUILTIN_WORKLOADS, load
from tests.paths import EXAMPLES


def test_builtin_workloads_resolve_to_train_functions():
    assert set(BUILTIN_WORKLOADS) == {"gpt", "llama", "mlp"}
    for name, workload in BUILTIN_WORKLOADS.items():
        assert workload.name == name
        assert callable(load(workload.entrypoint))
        workload.data_config()  # defaults are valid


def test_facts_count_the_parameters_of_the_model_the_probe_builds():
    for example in ("gpt-zero3", "llama-zero3", "mlp-digits"):
        spec = load_spec_file(EXAMPLES / f"{example}.yaml")
        workload = BUILTIN_WORKLOADS[spec.workload]
        facts = workload.model_facts(workload.model_config(**spec.model), spec.deepspeed.micro_batch_size)
        model, batch = load(workload.probe)(spec)
        assert facts.params == sum(p.numel() for p in model.parameters())
        assert facts.largest_tensor == max(p.numel() for p in model.parameters())
        x, y = batch()
        units = x.numel() if facts.unit == "tokens" else x.shape[0]
        assert units == facts.units_per_micro
        _, loss = model(x, y)
        assert torch.isfinite(loss)


def test_reported_metrics_and_predict_are_declared_per_workload():
    assert BUILTIN_WORKLOADS["gpt"].metrics == ("loss", "eval_loss")
    assert BUILTIN_WORKLOADS["llama"].metrics == ("loss", "eval_loss")
    assert BUILTIN_WORKLOADS["llama"].activation_checkpointing and BUILTIN_WORKLOADS["llama"].predict is None
    assert BUILTIN_WORKLOADS["mlp"].metrics == ("loss", "eval_loss", "eval_accuracy")
    assert BUILTIN_WORKLOADS["gpt"].predict is None
    assert callable(load(BUILTIN_WORKLOADS["mlp"].predict or ""))
