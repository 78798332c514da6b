"""`orch data prepare`: check the inputs, settle the tokenizer, store the plan, hand the work to the cluster as a
Ray job (the same cluster, connection rules and credential path as training jobs), follow it, report.

Everything that can be refused is refused before anything is written: inputs, text field, flags, the tokenizer
and a --out that holds a dataset of another tokenizer. The Ray job (orchestrator/runtime/data_prepare.py) runs
one task per work unit and writes index.json last; a rerun skips the units already committed.
"""

from __future__ import annotations

import shlex
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from orchestrator.control import job_secrets
from orchestrator.control.ray_jobs import job_runtime_env
from orchestrator.core.errors import OrchError
from orchestrator.core.prepare_plan import ERROR_PREFIX, PLAN_KEY, PreparePlan, read_plan, tokenizer_sha256
from orchestrator.core.secrets import write_secrets_file
from orchestrator.core.text_inputs import InputFile, check_text_field, plan_units, resolve_inputs, sample_texts
from orchestrator.core.token_shards import INDEX_KEY, TOKENIZER_KEY, UNITS_DIR, dtype_for_vocab, read_index
from orchestrator.storage import NotFound, ObjectStore, open_store

EOS_TOKEN = "<|endoftext|>"
DEFAULT_SHARD_TOKENS = 16_777_216
DEFAULT_UNIT_BYTES = 64 << 20
TRAIN_SAMPLE_BYTES = 256 << 20  # a trained tokenizer sees about this much text, spread over the inputs


@dataclass(frozen=True)
class PrepareOptions:
    inputs: tuple[str, ...]
    out: str
    tokenizer: str | None = None  # a tokenizer.json file
    vocab_size: int | None = None  # or: train a byte-level BPE of this size
    eos_token: str = EOS_TOKEN
    text_field: str = "text"
    shard_tokens: int = DEFAULT_SHARD_TOKENS
    val_fraction: float = 0.05
    unit_bytes: int = DEFAULT_UNIT_BYTES


@dataclass(frozen=True)
class Progress:
    units_done: int
    units_total: int
    tokens: int


@dataclass(frozen=True)
class PrepareResult:
    out: str
    shards: int
    train_shards: int
    val_shards: int
    tokens_train: int
    tokens_val: int
    dtype: str
    vocab_size: int
    eos_id: int
    units: int
    units_skipped: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_options(o: PrepareOptions) -> None:
    if (o.tokenizer is None) == (o.vocab_size is None):
        raise OrchError("Give exactly one of --tokenizer FILE (a tokenizer.json to use) and --vocab-size N (train "
                        "a byte-level BPE of N tokens on the inputs).")
    if o.vocab_size is not None and not 257 <= o.vocab_size <= 2**32:
        raise OrchError(f"--vocab-size {o.vocab_size}: a byte-level BPE needs at least 257 tokens (256 bytes and "
                        "the end-of-text token) and at most 2**32. Choose e.g. --vocab-size 32000.")
    if o.shard_tokens < 1:
        raise OrchError(f"--shard-tokens {o.shard_tokens}: a shard holds at least one token; the default is "
                        f"{DEFAULT_SHARD_TOKENS}.")
    if not 0.0 < o.val_fraction < 1.0:
        raise OrchError(f"--val-fraction {o.val_fraction}: give a fraction between 0 and 1 (default 0.05); at "
                        "least one shard is held out for validation.")
    if o.unit_bytes < 1:
        raise OrchError(f"--unit-mb: a work unit must hold at least one byte, got {o.unit_bytes}.")
    if not o.text_field:
        raise OrchError("--text-field is empty; name the JSON field or Parquet column that holds the text.")


def _load_tokenizer(path: str, eos_token: str) -> tuple[Any, int]:
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(path)
    except Exception as exc:  # tokenizers raises a bare Exception for unreadable files
        raise OrchError(f"--tokenizer {path}: cannot load it as a tokenizer.json ({exc}). Give a file saved with "
                        "tokenizers' Tokenizer.save(), or train one with --vocab-size N.") from None
    eos_id = tokenizer.token_to_id(eos_token)
    if eos_id is None:
        raise OrchError(f"--tokenizer {path} has no token {eos_token!r} to end documents with. Name its "
                        "end-of-text token with --eos-token TOKEN.")
    return tokenizer, eos_id


def train_tokenizer(files: list[InputFile], text_field: str, vocab_size: int) -> Any:
    """A byte-level BPE (GPT-2 style pre-tokenizer and decoder) with `<|endoftext|>` as token 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(sample_texts(files, text_field, TRAIN_SAMPLE_BYTES), trainer=trainer)
    return tokenizer


def _stored_tokenizer(out: ObjectStore) -> str | None:
    try:
        return out.get_bytes(TOKENIZER_KEY).decode()
    except NotFound:
        return None


def plan_preparation(options: PrepareOptions, out: ObjectStore) -> tuple[PreparePlan, str]:
    """The plan and the tokenizer's JSON, or a refusal; writes nothing."""
    _check_options(options)
    files = resolve_inputs(list(options.inputs))
    check_text_field(files, options.text_field)
    units = tuple(plan_units(files, options.unit_bytes))
    stored = _stored_tokenizer(out)
    previous = read_plan(out)
    if options.tokenizer is not None:
        tokenizer, eos_id = _load_tokenizer(options.tokenizer, options.eos_token)
        text, trained = tokenizer.to_str(), None
    elif (stored is not None and previous is not None and previous.trained_vocab_size == options.vocab_size
          and previous.units == units and previous.text_field == options.text_field
          and tokenizer_sha256(stored) == previous.tokenizer_sha256):
        # The same inputs with the same --vocab-size: the tokenizer trained last time, not a new one.
        from tokenizers import Tokenizer

        text, trained = stored, options.vocab_size
        eos_id = Tokenizer.from_str(stored).token_to_id(EOS_TOKEN)
    else:
        tokenizer = train_tokenizer(files, options.text_field, int(options.vocab_size or 0))
        text, trained, eos_id = tokenizer.to_str(), options.vocab_size, tokenizer.token_to_id(EOS_TOKEN)
    if stored is not None and tokenizer_sha256(stored) != tokenizer_sha256(text):
        raise OrchError(f"--out {out.uri} already holds a dataset (or part of one) made with another tokenizer; "
                        "its shards cannot be mixed with this tokenizer's. Prepare into a new --out, or delete "
                        "that one first.")
    from tokenizers import Tokenizer

    vocab_size = Tokenizer.from_str(text).get_vocab_size(with_added_tokens=True)
    plan = PreparePlan(units=units, tokenizer_sha256=tokenizer_sha256(text), vocab_size=vocab_size,
                       eos_id=int(eos_id), text_field=options.text_field, shard_tokens=options.shard_tokens,
                       val_fraction=options.val_fraction, sources=tuple(options.inputs), trained_vocab_size=trained)
    assert plan.dtype == dtype_for_vocab(vocab_size)
    return plan, text


def store_plan(out: ObjectStore, plan: PreparePlan, tokenizer_text: str) -> int:
    """Store the tokenizer (before any shard) and the plan; returns how many units are committed already."""
    from orchestrator.core.prepare_plan import committed_record

    skipped = sum(committed_record(out, plan, u) is not None for u in plan.units)
    if read_plan(out) != plan:
        out.delete(INDEX_KEY)  # shards are about to change: the old index no longer describes them
    out.put_bytes(TOKENIZER_KEY, tokenizer_text.encode())
    out.put_bytes(PLAN_KEY, plan.to_json())
    return skipped


class _UnitsSeen:
    """Units committed so far, from their records in storage (the runtime reports only by writing storage);
    each record is read once."""

    def __init__(self, out: ObjectStore, plan: PreparePlan, skipped: int) -> None:
        self.out, self.plan, self.skipped = out, plan, skipped
        self.tokens: dict[str, int] = {}

    def progress(self) -> Progress:
        from orchestrator.core.prepare_plan import UnitRecord

        for info in self.out.list(UNITS_DIR.rstrip("/")):
            if info.key in self.tokens:
                continue
            try:
                record = UnitRecord.from_json(self.out.get_bytes(info.key))
            except (NotFound, ValueError, KeyError, TypeError):
                continue
            units = self.plan.units
            if record.unit < len(units) and record.signature == self.plan.unit_signature(units[record.unit]):
                self.tokens[info.key] = record.tokens
        return Progress(max(len(self.tokens), self.skipped), len(self.plan.units), sum(self.tokens.values()))


def prepare_data(manager: Any, options: PrepareOptions,
                 on_progress: Callable[[Progress], None] | None = None, poll_s: float = 1.0) -> PrepareResult:
    """Prepare a token dataset on the manager's cluster; returns what index.json says."""
    started = time.monotonic()
    out = open_store(options.out)
    out.check()
    plan, tokenizer_text = plan_preparation(options, out)  # every refusal before a cluster starts
    url = manager.cluster_url(start=True)
    same_machine = manager.shares_machine(url)
    if not same_machine:
        local = [i for i in options.inputs if not i.startswith("s3://")]
        if local or not out.uri.startswith("s3://"):
            raise OrchError(f"{(local or [out.uri])[0]} is on this machine, but the Ray cluster at {url} runs "
                            "elsewhere and its tasks cannot read or write there. Use s3:// inputs and --out.")
    if manager.local.was_embedded(url):
        from orchestrator.control.scheduler import ensure_scheduler

        ensure_scheduler(manager.home)  # it stops the embedded cluster once idle, as after a job
    skipped = store_plan(out, plan, tokenizer_text)
    record_id = f"prepare-{uuid.uuid4().hex[:12]}"
    secrets_file = write_secrets_file(manager.secrets_dir, record_id, {}) if same_machine else None
    try:
        status, message = _run_job(manager, url, record_id, out.uri, secrets_file, same_machine, plan, skipped,
                                   on_progress, poll_s)
    finally:
        job_secrets.drop(manager.secrets_dir, record_id)
    if status != "SUCCEEDED":
        raise OrchError(message)
    index = read_index(out)
    return PrepareResult(out=out.uri, shards=len(index.shards), train_shards=len(index.split("train")),
                         val_shards=len(index.split("val")), tokens_train=index.tokens("train"),
                         tokens_val=index.tokens("val"), dtype=index.dtype, vocab_size=index.vocab_size,
                         eos_id=index.eos_id, units=len(plan.units), units_skipped=skipped,
                         seconds=round(time.monotonic() - started, 2))


def _run_job(manager: Any, url: str, record_id: str, out_uri: str, secrets_file: Any, same_machine: bool,
             plan: PreparePlan, skipped: int, on_progress: Callable[[Progress], None] | None,
             poll_s: float) -> tuple[str, str]:
    ray = manager.ray_for(url)
    runtime_env = job_runtime_env(False, secrets_file, {}, None, same_machine)
    # The embedded cluster runs our own interpreter; a remote cluster has its own `python` on PATH.
    python = sys.executable if same_machine else "python"
    entrypoint = " ".join(shlex.quote(p) for p in (python, "-m", "orchestrator.runtime.data_prepare", "--out",
                                                    out_uri))
    ray.submit(record_id, entrypoint, runtime_env, metadata={"orch_data_prepare": out_uri})
    seen = _UnitsSeen(open_store(out_uri), plan, skipped)
    embedded = manager.local.was_embedded(url)
    status: str | None = None
    try:
        while True:
            if embedded:
                manager.local.touch_activity()  # the embedded cluster is busy: no idle stop under us
            status, _ = ray.status(record_id)
            if on_progress is not None:
                on_progress(seen.progress())
            if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                break
            time.sleep(poll_s)
    except KeyboardInterrupt:
        ray.stop(record_id)
        raise
    if status == "SUCCEEDED":
        return status, ""
    lines = [ln for ln in ray.logs(record_id).splitlines() if ln.startswith(ERROR_PREFIX)]
    reason = lines[-1] if lines else (f"the Ray job {record_id} ended {status}; see `ray job logs {record_id}`. "
                                      "A rerun resumes where it stopped.")
    return str(status), reason

