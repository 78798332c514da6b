"""GPU mode: tokens/s and MFU of the GPT job (GPT-2-small shape, 124M parameters, bf16) on one GPU, ZeRO-1 and
ZeRO-3, through `orch`. Measures only where torch sees a CUDA device; elsewhere the section says so."""

from __future__ import annotations

from bench.common import Bench, steady_rate

SPEC = "jobs/examples/gpt-gpu.yaml"
STEPS = 60
MICRO_BATCH = 16  # x 1024 tokens; fits an 80 GB H100 with fp32 logits
# What strong public stacks report for ~1B-parameter models on H100 (the reference), as the baseline.
REFERENCE_MFU = 0.40


def run(bench: Bench) -> str:
    import torch

    if not torch.cuda.is_available():
        return ("Not measured: this machine has no CUDA device. On a GPU node, `python -m bench.run --only gpu` "
                f"runs `{SPEC}` on one GPU at ZeRO-1 and ZeRO-3 and fills this in.")
    device = torch.cuda.get_device_name()
    lines = [f"`{SPEC}` on 1 x {device}: {STEPS} steps, bf16, micro batch {MICRO_BATCH} x 1024 tokens, no gradient "
             f"accumulation; MFU counts 6N + attention FLOPs per token against the dense bf16 peak.", "",
             "| ZeRO | tokens/s | MFU | vs 40% reference MFU |", "| --- | ---: | ---: | ---: |"]
    for stage in (1, 3):
        job = bench.submit(SPEC, f"name=gpu-zero{stage}", f"deepspeed.zero_stage={stage}", "scaling.num_workers=1",
                           f"deepspeed.micro_batch_size={MICRO_BATCH}", "deepspeed.gradient_accumulation_steps=1",
                           f"train.steps={STEPS}", "train.warmup_steps=0", "train.eval_every=0",
                           "checkpoint.every_steps=0", "checkpoint.at_end=false")
        rows = bench.metrics(job)
        tokens, mfu = steady_rate(rows, "tokens_per_s"), steady_rate(rows, "mfu")
        lines.append(f"| {stage} | {tokens:,.0f} | {mfu:.1%} | **{mfu / REFERENCE_MFU:.2f}** |")
    return "\n".join(lines)


if __name__ == "__main__":
    with Bench() as b:
        print(run(b))
