"""Reading and writing HF safetensors checkpoints, one tensor at a time.

:class:`HFCheckpointReader` opens a model directory (``model.safetensors`` or a sharded index) lazily,
so each rank reads only the tensors it needs. :class:`HFCheckpointWriter` streams tensors into
size-capped shards named like ``save_pretrained`` does, plus ``model.safetensors.index.json``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from megatron_hapo.models.errors import ConversionError, MissingWeightsError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_WEIGHT_FILE = re.compile(
    r".*\.(safetensors|bin|pt|pth|ckpt|h5|msgpack)$|.*\.safetensors\.index\.json$|.*\.bin\.index\.json$"
)


class HFCheckpointReader:
    """Lazy access to the tensors of a HF model directory.

    Raises :class:`MissingWeightsError` when the directory has no safetensors weights or a shard the
    index lists is missing.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        index = self.directory / INDEX_NAME
        single = self.directory / SINGLE_NAME
        if index.is_file():
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        elif single.is_file():
            weight_map = dict.fromkeys(_safetensors_keys(single), SINGLE_NAME)
        elif any(self.directory.glob("*.bin")):
            raise MissingWeightsError(
                f"{self.directory} holds PyTorch .bin weights; only safetensors are read. Re-save it with "
                "`AutoModelForCausalLM.from_pretrained(dir).save_pretrained(new_dir)` (safetensors by default)."
            )
        else:
            raise MissingWeightsError(
                f"{self.directory} has neither {INDEX_NAME} nor {SINGLE_NAME}: no HF weights"
            )
        missing = sorted({f for f in weight_map.values() if not (self.directory / f).is_file()})
        if missing:
            raise MissingWeightsError(
                f"{self.directory}: shard(s) {missing} listed in {INDEX_NAME} are missing; "
                "re-download or re-copy the checkpoint"
            )
        self.weight_map = weight_map
        self._open: dict[str, object] = {}

    def names(self) -> set[str]:
        return set(self.weight_map)

    def get(self, name: str) -> torch.Tensor:
        """The tensor ``name`` (on CPU, in its stored dtype)."""
        from safetensors import safe_open

        try:
            file = self.weight_map[name]
        except KeyError:
            raise MissingWeightsError(
                f"{self.directory} has no tensor {name!r}; the checkpoint does not match its config.json "
                "(architecture, number of layers or tied embeddings)"
            ) from None
        if file not in self._open:
            self._open[file] = safe_open(self.directory / file, framework="pt", device="cpu")
        return self._open[file].get_tensor(name)


def _safetensors_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(path, framework="pt", device="cpu") as f:
        return list(f.keys())


def parse_size(text: str | int) -> int:
    """'5GB', '500MB', '2GiB' or a byte count -> bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B)?\s*", text.upper())
    if not m:
        raise ValueError(f"cannot parse size {text!r}; use e.g. 5GB, 500MB or a byte count")
    unit = m.group(2) or "B"
    power = " KMGT".index(unit[0]) if unit != "B" else 0
    base = 1024 if "I" in unit else 1000
    return int(float(m.group(1)) * base**power)


def check_output_dir(out_dir: str | os.PathLike) -> None:
    """Raise :class:`ConversionError` if ``out_dir`` already holds weight files (never mix two models)."""
    out_dir = Path(out_dir)
    existing = [p.name for p in out_dir.iterdir() if _WEIGHT_FILE.match(p.name)] if out_dir.is_dir() else []
    if existing:
        raise ConversionError(f"{out_dir} already holds weight files {existing[:4]}; choose an empty --out")


class HFCheckpointWriter:
    """Stream ``(name, tensor)`` pairs into safetensors shards of at most ``max_shard_bytes``.

    Shards are written as they fill (memory stays at about one shard) and renamed to
    ``model-0000i-of-0000N.safetensors`` by :meth:`close`, which also writes the index.
    """

    def __init__(
        self, out_dir: str | os.PathLike, max_shard_bytes: int = 5 * 10**9, dtype: torch.dtype | None = None
    ):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        existing = [p.name for p in self.out_dir.iterdir() if _WEIGHT_FILE.match(p.name)]
        if existing:
            raise ConversionError(
                f"{self.out_dir} already holds weight files {existing[:4]}; choose an empty --out"
            )
        self.max_shard_bytes = max_shard_bytes
        self.dtype = dtype
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[list[str]] = []
        self._names: set[str] = set()
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._names:
            raise ConversionError(f"tensor {name!r} written twice")
        self._names.add(name)
        t = tensor.detach().to("cpu", dtype=self.dtype or tensor.dtype).contiguous()
        size = t.numel() * t.element_size()
        if self._pending and self._pending_bytes + size > self.max_shard_bytes:
            self._flush()
        self._pending[name] = t
        self._pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        from safetensors.torch import save_file

        save_file(self._pending, self.out_dir / f".shard-{len(self._shards)}.tmp", metadata={"format": "pt"})
        self._shards.append(list(self._pending))
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> Path:
        """Finish the last shard, name the shards and write the index; returns the index path."""
        if self._pending or not self._shards:
            self._flush()
        n = len(self._shards)
        weight_map = {}
        for i, names in enumerate(self._shards):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            (self.out_dir / f".shard-{i}.tmp").rename(self.out_dir / final)
            weight_map.update(dict.fromkeys(names, final))
        index = self.out_dir / INDEX_NAME
        index.write_text(
            json.dumps(
                {
                    "metadata": {"total_size": self.total_bytes},
                    "weight_map": dict(sorted(weight_map.items())),
                },
                indent=2,
            )
        )
        return index


def copy_reference_files(
    reference_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    dtype: torch.dtype | None,
    config_overrides: Mapping[str, Any] | None = None,
) -> list[str]:
    """Copy config.json, tokenizer and generation files (everything but weights) from ``reference_dir``.

    config.json gets ``config_overrides`` (``model.override_config``: the model the weights belong to) and
    its ``dtype`` / ``torch_dtype`` set to ``dtype`` (the dtype the weights were written in).
    Returns the copied file names.
    """
    src, dst = Path(reference_dir), Path(out_dir)
    copied = []
    for path in sorted(src.iterdir()):
        if not path.is_file() or _WEIGHT_FILE.match(path.name):
            continue
        if path.name == "config.json" and (dtype is not None or config_overrides):
            config = {**json.loads(path.read_text()), **(config_overrides or {})}
            if dtype is not None:
                name = str(dtype).removeprefix("torch.")
                for key in ("dtype", "torch_dtype"):
                    if key in config:
                        config[key] = name
            (dst / path.name).write_text(json.dumps(config, indent=2) + "\n")
        else:
            shutil.copy2(path, dst / path.name)
        copied.append(path.name)
    return copied
