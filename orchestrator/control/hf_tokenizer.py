"""The tokenizer an HF export carries: the prepared dataset's own, or the built-in byte-level one rebuilt in
`tokenizers` so that AutoTokenizer gives exactly the gpt workload's ids (id = UTF-8 byte value, 0..255)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.core.errors import OrchError


@dataclass(frozen=True)
class TokenizerSource:
    tokenizer_json: str  # a serialized `tokenizers.Tokenizer`
    eos_id: int | None  # the id that ends each document (prepared datasets); None for raw bytes
    origin: str  # for messages: where it came from


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte (what tokenizers' ByteLevel pre-tokenizer emits)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def byte_level_tokenizer() -> Any:
    """A `tokenizers.Tokenizer` whose ids are the text's UTF-8 bytes, like gpt/data.py encode/decode.

    BPE over the 256 byte characters with no merges: every byte stays its own token, and its id is the byte."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {char: byte for byte, char in _bytes_to_unicode().items()}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    # No regex split and no prefix space: the whole text becomes its bytes, nothing added or dropped.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def tokenizer_for(spec: dict[str, Any]) -> TokenizerSource:
    """The tokenizer a job's token ids come from: its prepared dataset's, else the built-in bytes."""
    from orchestrator.core.token_shards import TOKENIZER_KEY, is_prepared_dataset_path, read_index
    from orchestrator.storage import StorageError, open_store

    path = (spec.get("data") or {}).get("path")
    if path is None or not is_prepared_dataset_path(path):
        return TokenizerSource(byte_level_tokenizer().to_str(), None, "the built-in byte-level tokenizer")
    try:
        store = open_store(path)
        index = read_index(store)
        raw = store.get_bytes(index.tokenizer or TOKENIZER_KEY).decode()
    except (StorageError, ValueError, UnicodeDecodeError) as exc:
        raise OrchError(f"The job's data.path {path} is a prepared dataset, but its tokenizer cannot be read "
                        f"({str(exc)[:200]}). The export needs it: make the dataset readable from here (storage "
                        "credentials, the path) and run the export again.") from None
    return TokenizerSource(raw, index.eos_id, f"{path}/{index.tokenizer or TOKENIZER_KEY}")


def save_tokenizer(source: TokenizerSource, out: Path, model_max_length: int) -> None:
    """tokenizer.json, tokenizer_config.json and the special tokens, as AutoTokenizer reads them."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer.from_str(source.tokenizer_json)
    special: dict[str, str] = {}
    if source.eos_id is not None:
        eos = tokenizer.id_to_token(source.eos_id)
        if eos is None:
            raise OrchError(f"The dataset's eos_id {source.eos_id} is not in its tokenizer ({source.origin}); "
                            "prepare the dataset again.")
        special = {"eos_token": eos, "pad_token": eos}
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=model_max_length,
                                   clean_up_tokenization_spaces=False, **special)
    fast.save_pretrained(str(out))
