"""Llama-architecture causal LM pretraining (built from `transformers`, nothing downloaded)."""
