"""`orch generate`: sample text from a Hugging Face export with transformers alone (AutoModelForCausalLM,
AutoTokenizer, model.generate), exactly as anyone given the directory would. A job is exported first."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.core.errors import OrchError

DEFAULT_MAX_NEW_TOKENS = 50


@dataclass(frozen=True)
class Generation:
    prompt: str
    text: str  # the prompt and its continuation
    tokens: list[int]  # the continuation's token ids

    def as_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "text": self.text, "tokens": self.tokens}


def check_sampling(prompt: str, max_new_tokens: int | None, temperature: float, top_k: int | None) -> None:
    """Bad sampling settings, refused before a model is loaded or a job exported."""
    if not prompt:
        raise OrchError("--prompt is empty. Give the text to continue, e.g. --prompt 'Once upon a time'.")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise OrchError(f"--max-new-tokens {max_new_tokens}: give at least 1.")
    if not temperature >= 0:  # also refuses NaN
        raise OrchError(f"--temperature {temperature}: give 0 (greedy) or a positive number (1 samples the model's "
                        "own distribution).")
    if top_k is not None and top_k < 1:
        raise OrchError(f"--top-k {top_k}: give at least 1, or leave it out to sample from every token.")


def check_model_dir(raw: str) -> Path:
    path = Path(raw)
    if not (path / "config.json").is_file():
        raise OrchError(f"{raw} is not a Hugging Face model directory (no config.json). Give a directory written by "
                        "`orch export JOB --format hf --out DIR`, or a job id.")
    return path


def generate_from_dir(model_dir: str | Path, prompt: str, max_new_tokens: int | None = None,
                      temperature: float = 1.0, top_k: int | None = None, seed: int | None = None) -> Generation:
    """Continue `prompt` with the model in `model_dir`; a seed makes sampling reproducible, temperature 0 is greedy."""
    check_sampling(prompt, max_new_tokens, temperature, top_k)
    path = check_model_dir(str(model_dir))
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers import logging as hf_logging

    hf_logging.set_verbosity_error()  # "setting pad_token_id" and similar notices are not the user's output
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path))
    except (OSError, ValueError, KeyError) as exc:
        raise OrchError(f"{model_dir} cannot be loaded by transformers ({str(exc)[:200]}). Export the job again "
                        "with `orch export JOB --format hf --out DIR`.") from None
    model.eval()
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    if ids.shape[1] == 0:
        raise OrchError("--prompt has no tokens under this model's tokenizer. Give some text.")
    context = int(model.config.max_position_embeddings)
    room = context - ids.shape[1]
    if room < 1 or (max_new_tokens is not None and max_new_tokens > room):
        raise OrchError(f"The prompt is {ids.shape[1]} tokens and the model's context is {context}: room for "
                        f"{max(room, 0)} new tokens. Shorten --prompt or give --max-new-tokens {max(room, 1)} or "
                        "less.")
    new = min(DEFAULT_MAX_NEW_TOKENS, room) if max_new_tokens is None else max_new_tokens
    sampling: dict[str, Any] = {"do_sample": False}
    if temperature > 0:
        sampling = {"do_sample": True, "temperature": temperature, "top_k": top_k or 0, "top_p": 1.0}
    if seed is not None:
        from transformers import set_seed

        set_seed(seed)  # seeds torch's generator, which model.generate samples with
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                             pad_token_id=model.config.pad_token_id if model.config.pad_token_id is not None else 0,
                             **sampling)
    continuation = out[0, ids.shape[1]:].tolist()
    return Generation(prompt, prompt + tokenizer.decode(continuation, skip_special_tokens=True), continuation)
