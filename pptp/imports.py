"""A user's code named by import path: ``package.module:function`` or ``path/to/file.py:function``.

The one way a space names code that is not part of pptp (a model factory, ``model.name``; a data
loader, ``data.name``). A module path is imported with :func:`importlib.import_module` (it must be
importable where the trial runs: installed, or on ``PYTHONPATH``); a file path is loaded with
:func:`importlib.util.spec_from_file_location` under a module name made from the file's absolute
path, once per process; on a node where that file does not exist, the module of the file's stem
that the search shipped there (``search/running/user_code.py``). Every failure (no such file or
module, an import that raises, no such function, not callable) is one
:class:`~pptp.errors.ConfigError` naming the key and the path.

:func:`source_fingerprint` hashes the file that defines the function (its bytes), so that the
reference bank never reuses references trained with other code (:mod:`pptp.bank`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from pptp.errors import ConfigError

_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_FUNCTION = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def is_import_path(name: str) -> bool:
    """Whether ``name`` names user code (``module:function`` or ``file.py:function``)."""
    return isinstance(name, str) and ":" in name


def split(path: str) -> tuple[str, str]:
    """``("pkg.mod" or "dir/file.py", "function")``: split at the last colon."""
    where, _, function = path.rpartition(":")
    return where, function


def is_file_path(path: str) -> bool:
    """Whether the module part of ``path`` is a file (``.py`` or a path with a slash)."""
    where, _ = split(path)
    return where.endswith(".py") or "/" in where or "\\" in where


def absolute(path: str, root: Path) -> str:
    """``path`` with a relative file made absolute against ``root`` (modules are unchanged)."""
    if not is_import_path(path) or not is_file_path(path):
        return path
    where, function = split(path)
    return f"{(root / where).resolve()}:{function}"


def key_name(path: str) -> str:
    """``path`` as the reference bank keys it: a file by its name only (``mynet.py:build``), so a
    project that moves keeps its bank; the file's content is keyed by :func:`source_fingerprint`."""
    if not is_import_path(path) or not is_file_path(path):
        return path
    where, function = split(path)
    return f"{Path(where).name}:{function}"


def resolve(path: str, *, key: str) -> Callable[..., Any]:
    """The function ``path`` names; :class:`ConfigError` (``key=key``) when it cannot be had."""
    where, function = split(path)
    if not where or not _FUNCTION.fullmatch(function):
        raise ConfigError(
            f"{key} = {path!r}: write package.module:function or path/to/file.py:function",
            key=key,
        )
    module = _load_module(where, key=key)
    target: Any = module
    for part in function.split("."):
        if not hasattr(target, part):
            defined = sorted(n for n, v in vars(module).items() if callable(v) and n[:1] != "_")
            raise ConfigError(
                f"{key} = {path!r}: {where} has no {function!r}; it defines "
                f"{', '.join(defined) or 'no function'}",
                key=key,
            )
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(
            f"{key} = {path!r}: {function} is a {type(target).__name__}, not a function", key=key
        )
    return target  # type: ignore[no-any-return]


def source_file(path: str, *, key: str) -> Path | None:
    """The file that defines the function ``path`` names (None for a built-in)."""
    function = resolve(path, key=key)
    try:
        found = inspect.getsourcefile(function)
    except TypeError:
        found = None
    if found is None:
        module = sys.modules.get(getattr(function, "__module__", ""))
        found = getattr(module, "__file__", None)
    return Path(found) if found else None


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def file_fingerprint(path: Path) -> str:
    """sha256 of a file's bytes (16 hex digits), cached per (path, mtime, size)."""
    stat = path.stat()
    return _file_digest(str(path), stat.st_mtime_ns, stat.st_size)


def source_fingerprint(path: str, *, key: str) -> str:
    """A hash of the file that defines ``path``'s function (16 hex digits): any change to that
    file (a line of the model, a comment) makes a new fingerprint. Other files the function
    imports are not hashed: keep a model in one file, or version its package."""
    found = source_file(path, key=key)
    return file_fingerprint(found) if found is not None and found.is_file() else ""


def _load_module(where: str, *, key: str) -> ModuleType:
    if where.endswith(".py") or "/" in where or "\\" in where:
        file = Path(where).expanduser().resolve()
        if not file.is_file() and importlib.util.find_spec(file.stem) is not None:
            # a node without the driver's file: the copy the search shipped onto this worker's
            # path (Ray runtime_env py_modules, search/running/user_code.py), by its stem
            return importlib.import_module(file.stem)
        return _load_file(str(file), key=key)
    if not _MODULE.fullmatch(where):
        raise ConfigError(f"{key}: {where!r} is neither a module name nor a .py file", key=key)
    try:
        return importlib.import_module(where)
    except Exception as error:  # an import runs user code: any exception is the user's to fix
        raise ConfigError(
            f"{key}: cannot import {where} ({type(error).__name__}: {_first_line(error)}); "
            "install it or put its folder on PYTHONPATH, or name the file (path/to/file.py:f)",
            key=key,
        ) from None


def _load_file(path: str, *, key: str) -> ModuleType:
    """The module of a ``.py`` file, loaded once per process (and re-loaded when it changed)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{key}: {path} is not a file", key=key)
    stat = file.stat()
    return _load_file_cached(path, stat.st_mtime_ns, stat.st_size, key)


@functools.lru_cache(maxsize=32)
def _load_file_cached(path: str, mtime_ns: int, size: int, key: str) -> ModuleType:
    name = "pptp_user_" + hashlib.sha256(path.encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{key}: cannot load {path} as Python", key=key)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses, pickling and torch.export look classes up here
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[name]
        raise ConfigError(
            f"{key}: {path} fails on import ({type(error).__name__}: {_first_line(error)})",
            key=key,
        ) from None
    return module


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""
