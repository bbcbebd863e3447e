"""One way to save and load the course's own small torch modules: safetensors + a JSON config.

Models that have a library format (transformers / diffusers / open_clip) are shipped with the
library's own ``save_pretrained``; the few course-only modules (the digits VAE, the latent score
model, the digits judge) use this: ``<name>.safetensors`` beside a JSON file with the constructor's
arguments, so loading needs no pickle and no code outside the package.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch


def save_module(module: torch.nn.Module, folder: str | Path, config: dict, *, name: str = "model",
                config_file: str = "config.json") -> Path:
    """Write ``module``'s weights to ``folder/<name>.safetensors`` and ``config`` to ``folder/<config_file>``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()},
              str(folder / f"{name}.safetensors"))
    (folder / config_file).write_text(json.dumps(config, indent=2) + "\n")
    return folder


def read_config(folder: str | Path, config_file: str = "config.json") -> dict:
    """The JSON config saved beside a module's weights."""
    path = Path(folder) / config_file
    if not path.is_file():
        raise FileNotFoundError(f"no {config_file} in {folder}")
    return json.loads(path.read_text())


def load_module(build: Callable[..., torch.nn.Module], folder: str | Path, *, name: str = "model",
                config_file: str = "config.json", config_keys: tuple[str, ...] | None = None,
                hint: str = "") -> torch.nn.Module:
    """``build(**config)`` with the weights of ``folder/<name>.safetensors`` (strict), in eval mode.

    ``config_keys`` keeps only those keys of the saved config (it may hold extra facts, such as the
    training recipe); ``hint`` is added to the error when the files are missing (which script makes them).
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    weights = folder / f"{name}.safetensors"
    if not weights.is_file() or not (folder / config_file).is_file():
        raise FileNotFoundError(f"no {name}.safetensors + {config_file} in {folder}" + (f"; {hint}" if hint else ""))
    config = read_config(folder, config_file)
    if config_keys is not None:
        config = {k: config[k] for k in config_keys if k in config}
    module = build(**config)
    module.load_state_dict(load_file(str(weights)), strict=True)
    return module.eval()
