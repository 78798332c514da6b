"""Autoregressive sampling from a trained GPT (plain torch, no DeepSpeed)."""

import torch

from orchestrator.workloads.gpt.model import GPT


@torch.no_grad()
def generate(
    model: GPT,
    prompt_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Extends prompt_ids, shape (B, T) int64 with T >= 1, by max_new_tokens: returns (B, T + max_new_tokens).

    temperature == 0 decodes greedily; otherwise tokens are sampled from softmax(logits / temperature)
    using `generator` (so a seeded generator gives a reproducible sample).
    """
    was_training = model.training
    model.eval()  # no dropout or input noise while sampling
    idx = prompt_ids
    for _ in range(max_new_tokens):
        # The model only has position embeddings for seq_len positions: condition on the latest ones.
        logits, _ = model(idx[:, -model.cfg.seq_len :])
        logits = logits[:, -1, :].float()
        if temperature == 0:
            next_id = logits.argmax(dim=-1, keepdim=True)
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
            next_id = torch.multinomial(probs, num_samples=1, generator=generator)
        idx = torch.cat((idx, next_id), dim=1)
    model.train(was_training)
    return idx
