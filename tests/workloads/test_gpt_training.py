import math
from pathlib import Path

import torch

from orchestrator.workloads.gpt.config import GPTDataConfig, GPTModelConfig
from orchestrator.workloads.gpt.data import TokenDataset, load_tokens
from orchestrator.workloads.gpt.model import GPT

# The corpus' byte unigram entropy is about 3.29 nats; ending below it means the model uses its context.
EVAL_LOSS_BELOW = 3.15


def test_a_few_hundred_adamw_steps_learn_the_corpus():
    cfg = GPTModelConfig()
    tokens = load_tokens(GPTDataConfig(), cfg.vocab_size, read_bytes=lambda uri: Path(uri).read_bytes())
    dataset = TokenDataset(tokens, val_fraction=0.1)
    torch.manual_seed(0)
    model = GPT(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-3)
    for step in range(300):
        x, y = dataset.batch(torch.Generator().manual_seed(step), 16, cfg.seq_len)
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model.eval()
    with torch.no_grad():
        generator = torch.Generator().manual_seed(10**6)
        losses = [model(*dataset.batch(generator, 16, cfg.seq_len, "val"))[1].item() for _ in range(8)]
    eval_loss = sum(losses) / len(losses)
    assert eval_loss < EVAL_LOSS_BELOW < math.log(cfg.vocab_size)
