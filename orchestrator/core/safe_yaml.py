"""YAML for specs, bounded before any parsing work: no aliases, no duplicate keys, a size cap.

PyYAML's SafeLoader builds no objects, but it expands aliases: a few hundred bytes of nested `*a` references
become billions of nodes (gigabytes and minutes, then a MemoryError). A job spec never needs aliases, and a
duplicate key silently keeps only the last value, so both are refused, as are specs larger than any real one.
The same loader reads specs that come back from storage (`orch sync`, the job driver).
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node

MAX_SPEC_BYTES = 256 * 1024  # the largest example spec is ~2 KB; a user's env and search space fit easily
# A job spec is a few levels deep. Composing recurses once per level, so without a bound a deep file is refused
# only by Python's recursion limit, which whatever the process imported before (torch) may have raised.
MAX_DEPTH = 100


class SpecYAMLError(yaml.MarkedYAMLError):
    """Refused before (or while) composing: `problem` says what and how to fix it."""

    def __init__(self, problem: str, mark: Any = None) -> None:
        super().__init__(problem=problem, problem_mark=mark)


class StrictLoader(yaml.SafeLoader):
    depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:  # type: ignore[override]
        if self.check_event(AliasEvent):
            event = self.peek_event()
            raise SpecYAMLError(f"it uses the YAML alias *{event.anchor}, which specs do not allow (aliases can "
                                "expand a small file into gigabytes); write the values out", event.start_mark)
        if self.depth >= MAX_DEPTH:
            raise SpecYAMLError(f"it is nested too deeply (over {MAX_DEPTH} levels; a job spec has a few)",
                                self.peek_event().start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base constructor reports it
                continue
            if duplicate:
                raise ConstructorError(None, None, f"the key '{str(key)[:80]}' appears twice in one mapping "
                                       "(YAML keeps only the last); keep one", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load(text: str | bytes, what: str = "spec") -> Any:
    """Parse one YAML document with StrictLoader, after the size cap."""
    if len(text) > MAX_SPEC_BYTES:
        raise SpecYAMLError(f"the {what} is {len(text)} bytes, more than the {MAX_SPEC_BYTES} a spec may have; "
                            "it cannot be a job spec")
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # a value used twice is written twice, so StrictLoader can read the spec back


def dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_NoAliasDumper, sort_keys=False)
