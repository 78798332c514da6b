"""What a user writes by hand without orch: a TorchTrainer running the same GPT under DeepSpeed ZeRO-3.
Writes the wall-clock time of the first finished step to the file named on the command line."""

from __future__ import annotations

import sys
import time


def loop(config: dict) -> None:
    import deepspeed
    import ray.train
    import torch

    from bench.common import GPT_MODEL, MICRO_BATCH
    from orchestrator.workloads.gpt.config import GPTDataConfig, GPTModelConfig
    from orchestrator.workloads.gpt.data import TokenDataset, load_tokens
    from orchestrator.workloads.gpt.model import GPT

    cfg = GPTModelConfig(**GPT_MODEL)
    ds_config = {"train_micro_batch_size_per_gpu": MICRO_BATCH, "gradient_accumulation_steps": 1,
                 "train_batch_size": MICRO_BATCH * ray.train.get_context().get_world_size(),
                 "zero_optimization": {"stage": 3}, "steps_per_print": 10**9}
    deepspeed.init_distributed(dist_backend="gloo")
    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        model = GPT(cfg)
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
                                      config=ds_config)
    dataset = TokenDataset(load_tokens(GPTDataConfig(), cfg.vocab_size, read_bytes=None), 0.1)
    generator = torch.Generator().manual_seed(ray.train.get_context().get_world_rank())
    for step in range(3):
        _, loss = engine(*dataset.batch(generator, MICRO_BATCH, cfg.seq_len))
        engine.backward(loss)
        engine.step()
        if step == 0 and ray.train.get_context().get_world_rank() == 0:
            with open(config["marker"], "w") as fh:
                fh.write(str(time.time()))


if __name__ == "__main__":
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    TorchTrainer(loop, train_loop_config={"marker": sys.argv[1]},
                 scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                 torch_config=TorchConfig(backend="gloo"),
                 run_config=RunConfig(storage_path="/tmp/orch-bench-by-hand")).fit()
