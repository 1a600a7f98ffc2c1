"""Reading a space file: safe YAML that refuses duplicate keys, and nested keys made dotted.

``yaml.safe_load`` builds plain data only (never objects) but keeps the last
of two equal keys silently; :func:`read_yaml` refuses them, naming the line. Note YAML 1.1:
``1e-4`` is a string, ``1.0e-4`` a float (the type checks say so when it matters).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from search.space.errors import SpaceError, space_error


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys (safe_load keeps the last, silently)."""


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
