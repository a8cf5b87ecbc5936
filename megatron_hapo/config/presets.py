"""Algorithm presets (``hapo-train --preset NAME``): YAML files in ``megatron_hapo/config/presets/`` that a
user can read, applied after the config file and before the command-line overrides."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

PRESET_DIR = Path(__file__).parent / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_overrides(name: str) -> list[str]:
    """The preset ``name`` as ``key.sub=value`` overrides (values as JSON, which YAML reads back exactly)."""
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(preset_names())} (in {PRESET_DIR})")
    return [f"{key}={json.dumps(value)}" for key, value in _leaves(yaml.safe_load(path.read_text()))]


def _leaves(data: dict[str, Any], prefix: str = ""):
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
