"""GPT-style causal language model pretraining (nanoGPT-like), byte-level by default."""
