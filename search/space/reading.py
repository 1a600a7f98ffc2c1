"""Reading a space file: safe YAML that refuses duplicate keys, and nested keys made dotted.

``yaml.safe_load`` builds plain data only (never objects) but keeps the last
of two equal keys silently; :func:`read_yaml` refuses them, naming the line. Note YAML 1.1:
``1e-4`` is a string, ``1.0e-4`` a float (the type checks say so when it matters).

A space file cannot make the driver use much time or memory: a file over :data:`MAX_BYTES` is
refused before it is read, and the loader counts, while it composes the document, how many
values the document holds once its aliases are expanded (:data:`MAX_VALUES`: a "billion laughs"
file of 1 KB that expands to 10^9 strings is refused at the first level past it, in
milliseconds) and how deep it nests (:data:`MAX_DEPTH`, before Python's recursion limit).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from search.space.errors import SpaceError, space_error

#: the largest space file read (the shipped ones are under 5 KB)
MAX_BYTES = 256 * 1024
#: the most values (scalars, lists, mappings) a document may hold with its aliases expanded
MAX_VALUES = 100_000
#: the deepest nesting of lists and mappings
MAX_DEPTH = 64

#: attribute set on each composed node: its number of values with aliases expanded
_EXPANDED = "_pptp_expanded"


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys (safe_load keeps the last, silently), a
    document nested deeper than :data:`MAX_DEPTH` and one whose aliases expand past
    :data:`MAX_VALUES` values (each node carries its expanded size, so an alias costs one
    addition, never a walk of what it names)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        # the scanner's own bound: it keeps state per open ``[``/``{`` and rescans it for every
        # token, so 10,000 of them cost seconds before the composer sees the first level
        if self.flow_level >= MAX_DEPTH:
            raise yaml.scanner.ScannerError(
                None, None, f"nested deeper than {MAX_DEPTH} levels", self.get_mark()
            )
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        mark = self.peek_event().start_mark
        if self._depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested deeper than {MAX_DEPTH} levels", mark
            )
        alias = self.check_event(yaml.AliasEvent)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if alias:  # the anchored node, counted when it was composed
            if not hasattr(node, _EXPANDED):
                raise yaml.composer.ComposerError(
                    None, None, "an alias refers to the list or mapping that holds it", mark
                )
            return node
        setattr(node, _EXPANDED, _expanded(node))
        return node


def _expanded(node: yaml.Node | None) -> int:
    """How many values ``node`` holds with its aliases expanded (its children are counted
    already); past :data:`MAX_VALUES`, a ComposerError."""
    if isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    else:
        return 1
    total = 1 + sum(getattr(child, _EXPANDED) for child in children)
    if total > MAX_VALUES:
        raise yaml.composer.ComposerError(
            None,
            None,
            f"holds more than {MAX_VALUES} values once its aliases (*name) are expanded; "
            "a space file lists a few dozen",
            node.start_mark,
        )
    return total


def _mapping_without_duplicates(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may be overridden
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # unhashable key: construct_mapping reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def read_yaml(path: Path) -> tuple[bytes, Any]:
    """``(the file's bytes, its YAML document)``; a missing, unreadable or invalid file is a
    SpaceError naming the file (and the line, for YAML errors)."""
    source = str(path)
    if not path.is_file():
        raise SpaceError(f"{source}: not a file (give the path of a space YAML file)")
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise SpaceError(
                f"{source}: {size} bytes is too large for a space file (at most {MAX_BYTES})"
            )
        data = path.read_bytes()
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SpaceError(f"{source}: cannot read the file ({err})") from None
    try:
        return data, yaml.load(text, Loader=_Loader)  # a SafeLoader: plain data only
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise SpaceError(f"{source}: {where}invalid YAML: {problem}") from None


def mapping(value: Any, *, key: str, source: str, empty_ok: bool = True) -> Mapping[str, Any]:
    """``value`` as a mapping with string keys; None is ``{}`` when ``empty_ok``."""
    if value is None and empty_ok:
        return {}
    if not isinstance(value, Mapping):
        raise space_error(source, key, f"needs a mapping, got {value!r}")
    for k in value:
        if not isinstance(k, str):
            raise space_error(source, f"{key}.{k}", "keys must be strings")
    return value


def _flatten(value: Mapping[str, Any], *, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in value.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out += _flatten(v, prefix=f"{name}.")
        else:
            out.append((name, v))
    return out


def flat_dict(value: Mapping[str, Any], *, key: str, source: str) -> dict[str, Any]:
    """``{train: {lr: 0.1}, "train.epochs": 3}`` -> ``{"train.lr": 0.1, "train.epochs": 3}``.

    A key given twice (once nested, once dotted) is a SpaceError at ``<key>.<dotted key>``.
    """
    out: dict[str, Any] = {}
    for k, v in _flatten(value):
        if k in out:
            raise space_error(source, f"{key}.{k}", "given twice (once nested, once dotted)")
        out[k] = v
    return out
