"""``model.init``: start training from a local checkpoint (a production backbone to fine-tune).

The file is a ``.safetensors`` file (read with the ``safetensors`` package when it is installed)
or a PyTorch state dict read with ``torch.load(weights_only=True)``, which unpickles tensors and
plain containers only, never code. Nothing is downloaded. The state dict is loaded strictly:
every parameter and buffer of the model must be in it with its shape, and nothing else, or the
command stops with one :class:`~pptp.errors.ConfigError` listing what is missing, unexpected or
of another shape. Targets, references and the shipped model all start from it: it is part of the
recipe, and :func:`pptp.bank_key.user_fingerprints` keys the file's content.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from pptp.errors import ConfigError
from pptp.layers import shorten_names

KEY = "model.init"


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors by name; ConfigError naming the file when it cannot be read."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"{KEY}: {file} is not a file (give a local checkpoint)", key=KEY)
    if file.suffix == ".safetensors":
        if importlib.util.find_spec("safetensors") is None:
            raise ConfigError(
                f"{KEY}: {file} is a safetensors file and the safetensors package is not "
                "installed: pip install safetensors, or save a state dict with torch.save",
                key=KEY,
            )
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(file)))
        except Exception as error:
            raise ConfigError(f"{KEY}: cannot read {file} ({error})", key=KEY) from None
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt file, or a pickle of more than tensors
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ConfigError(
            f"{KEY}: cannot read {file} as a state dict with weights_only=True "
            f"({type(error).__name__}: {first})",
            key=KEY,
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(
            f"{KEY}: {file} holds no state dict (name -> tensor); save model.state_dict()",
            key=KEY,
        )
    return state


def load_init(model: nn.Module, path: str | Path) -> nn.Module:
    """Load ``path`` into ``model`` strictly (module docstring); returns ``model``."""
    state = read_state(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        f"{label}: {shorten_names(names)}"
        for label, names in (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
        if names
    ]
    if problems:
        raise ConfigError(
            f"{KEY}: {path} does not fit {type(model).__name__} ({'; '.join(problems)})", key=KEY
        )
    model.load_state_dict(state, strict=True)
    return model
