"""Property-based tests: whatever a user feeds the spec parser, the only failure is a SpecError.

Random documents, random mutations of the example specs (type swaps, deletions, unknown keys) and random
`--set` strings go through parse_spec / load_spec_file / apply_overrides. Valid mutations must parse, and
a parsed spec must parse again from its stored (redacted) form, because the driver re-reads it from storage.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.core.errors import SpecError
from orchestrator.core.spec import REDACTED, JobSpec, apply_overrides, load_spec_file, parse_spec
from tests.paths import REPO_ROOT

REPO = REPO_ROOT
EXAMPLES = {name: yaml.safe_load((REPO / "jobs" / "examples" / f"{name}.yaml").read_text())
            for name in ("gpt-zero3", "mlp-digits")}
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

keys = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(keys, inner, max_size=4)), max_leaves=12)


def parse_or_spec_error(data: Any, overrides: list[str] | tuple[str, ...] = ()) -> JobSpec | None:
    """parse_spec's result, or None for a SpecError; any other exception fails the test."""
    try:
        return parse_spec(data, overrides)
    except SpecError as exc:
        assert str(exc).strip() and "\n" not in str(exc).strip(), "errors must be one paragraph"
        return None


def paths(node: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path in a nested mapping (sections and leaves)."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            found.append((*prefix, key))
            found.extend(paths(value, (*prefix, key)))
    return found


def parent_of(data: dict, path: tuple[str, ...]) -> dict:
    for part in path[:-1]:
        data = data[part]
    return data


@st.composite
def mutated_example(draw: st.DrawFn) -> dict:
    data = copy.deepcopy(EXAMPLES[draw(st.sampled_from(sorted(EXAMPLES)))])
    for _ in range(draw(st.integers(1, 3))):
        candidates = paths(data)
        path = draw(st.sampled_from(candidates)) if candidates else ("name",)
        parent = parent_of(data, path) if candidates else data
        action = draw(st.sampled_from(["delete", "swap", "unknown"]))
        if action == "delete":
            parent.pop(path[-1], None)
        elif action == "swap":
            parent[path[-1]] = draw(values)
        else:
            parent[draw(keys)] = draw(values)
    return data


# ---- anything in, SpecError or JobSpec out --------------------------------------------------------------------
@FAST
@given(st.one_of(values, st.dictionaries(keys, values, max_size=6)))
def test_random_documents_parse_or_raise_spec_error(data):
    parse_or_spec_error(data)


@FAST
@given(mutated_example())
def test_mutated_examples_parse_or_raise_spec_error(data):
    spec = parse_or_spec_error(data)
    if spec is not None:  # whatever was accepted must survive the trip through storage
        assert parse_spec(spec.redacted()) == spec


@FAST
@given(st.sampled_from(sorted(EXAMPLES)), st.lists(st.text(max_size=30), max_size=3))
def test_random_set_strings_parse_or_raise_spec_error(example, overrides):
    parse_or_spec_error(EXAMPLES[example], overrides)


section_paths = st.sampled_from(sorted({".".join(p) for ex in EXAMPLES.values() for p in paths(ex)}))
set_values = st.one_of(st.sampled_from(["", "[", "{a: 1", "null", "true", "-1", "1e999", ".nan", "~", "{}", "[1, 2]",
                                        "2020-01-01", "!!python/object:os.system", "&a [*a]", "0x10"]),
                       st.text(max_size=12))


@FAST
@given(st.sampled_from(sorted(EXAMPLES)), st.lists(st.tuples(st.one_of(section_paths, keys), set_values),
                                                   min_size=1, max_size=3))
def test_structured_set_overrides_parse_or_raise_spec_error(example, pairs):
    parse_or_spec_error(EXAMPLES[example], [f"{path}={value}" for path, value in pairs])


@FAST
@given(st.one_of(values, st.dictionaries(keys, values, max_size=4)), st.lists(st.text(max_size=20), max_size=2))
def test_apply_overrides_only_raises_spec_error(data, overrides):
    try:
        result = apply_overrides(data, overrides)
    except SpecError:
        return
    assert isinstance(result, dict)


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                 mutated_example().map(lambda d: yaml.safe_dump(d).encode())))
def test_load_spec_file_on_random_bytes(content):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_bytes(content)
        try:
            load_spec_file(path)
        except SpecError as exc:
            assert str(path) in str(exc) or "invalid" in str(exc) or "spec" in str(exc).lower()


# ---- valid mutations parse, and say what was asked ---------------------------------------------------------------
def _valid_name() -> st.SearchStrategy[str]:
    return st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,40}\Z")


valid_changes = st.one_of(
    st.tuples(st.just("name"), _valid_name()),
    st.tuples(st.just("train.steps"), st.integers(20, 10**6)),  # >= both examples' warmup_steps
    st.tuples(st.just("train.lr"), st.floats(1e-8, 10.0)),
    st.tuples(st.just("train.seed"), st.integers(-(2**31), 2**31)),
    st.tuples(st.just("train.eval_every"), st.integers(0, 10**4)),
    st.tuples(st.just("train.report_every"), st.integers(1, 10**4)),
    st.tuples(st.just("train.lr_schedule"), st.sampled_from(["constant", "cosine", "linear"])),
    st.tuples(st.just("scaling.num_workers"), st.integers(1, 64)),
    st.tuples(st.just("scaling.cpus_per_worker"), st.floats(0.01, 64.0)),
    st.tuples(st.just("scaling.placement_strategy"), st.sampled_from(["PACK", "SPREAD", "STRICT_PACK"])),
    st.tuples(st.just("deepspeed.precision"), st.sampled_from(["fp32", "bf16"])),
    st.tuples(st.just("deepspeed.micro_batch_size"), st.integers(1, 512)),
    st.tuples(st.just("deepspeed.gradient_accumulation_steps"), st.integers(1, 64)),
    st.tuples(st.just("checkpoint.every_steps"), st.integers(0, 10**4)),
    st.tuples(st.just("checkpoint.keep_latest"), st.integers(0, 100)),
    st.tuples(st.just("failure.max_restarts"), st.integers(0, 100)),
    st.tuples(st.from_regex(r"\Aenv\.[A-Z][A-Z0-9_]{0,20}\Z"),
              st.text(st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\0"), max_size=30)),
)


@FAST
@given(st.sampled_from(sorted(EXAMPLES)), st.lists(valid_changes, min_size=1, max_size=5))
def test_valid_mutations_parse_and_take_effect(example, changes):
    data = copy.deepcopy(EXAMPLES[example])
    expected: dict[str, Any] = {}
    for path, value in changes:
        node = data
        parts = path.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
        expected[path] = value
    spec = parse_spec(data)
    dumped = spec.model_dump(mode="json")
    for path, value in expected.items():
        node = dumped
        for part in path.split("."):
            node = node[part]
        assert node == value, path
    stored = spec.redacted()
    assert parse_spec(stored).redacted() == stored
    assert all(v == REDACTED for k, v in stored["env"].items() if k in spec.secret_env())


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_examples_parse(example):
    assert parse_spec(EXAMPLES[example]).name == EXAMPLES[example]["name"]
