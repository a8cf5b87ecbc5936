"""How a bucket of HF-named tensors reaches the rollout engine."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Protocol

import torch

from megatron_hapo.rollout.types import RolloutEngine


class Transport(Protocol):
    name: str

    def send(self, bucket: list[tuple[str, torch.Tensor]]) -> None: ...

    def finish(self) -> None:
        """Called once after the last bucket (a transport that batches work does it here)."""


class TensorTransport:
    """``update_weights_from_tensor``: colocated engines (shared memory on CPU, CUDA IPC on GPU)."""

    name = "tensor"

    def __init__(self, engine: RolloutEngine):
        self.engine = engine

    def send(self, bucket):
        # detached contiguous copies: the engine may read them after we return
        self.engine.update_weights_from_tensor([(n, t.detach().contiguous()) for n, t in bucket])

    def finish(self):
        pass


class DiskTransport:
    """Write an HF safetensors checkpoint, then ``update_weights_from_disk`` (elastic fleets, debugging).

    ``hf_config_dir`` supplies config.json and tokenizer files; the written directory is replaced
    atomically so the engine never reads a half-written checkpoint.
    """

    name = "disk"

    def __init__(self, engine: RolloutEngine, hf_config_dir: str | Path, out_dir: str | Path):
        from safetensors.torch import save_file

        self._save_file = save_file
        self.engine = engine
        self.hf_config_dir = Path(hf_config_dir)
        self.out_dir = Path(out_dir)
        self._staging: Path | None = None
        self._index: dict[str, str] = {}

    def send(self, bucket):
        if self._staging is None:
            self.out_dir.parent.mkdir(parents=True, exist_ok=True)
            self._staging = Path(tempfile.mkdtemp(prefix=".sync-", dir=self.out_dir.parent))
            self._index = {}
        shard = f"model-{len(set(self._index.values())) + 1:05d}.safetensors"
        self._save_file({n: t.detach().contiguous().cpu() for n, t in bucket}, str(self._staging / shard))
        self._index.update({n: shard for n, _ in bucket})

    def finish(self):
        staging, self._staging = self._staging, None
        if staging is None:
            raise RuntimeError("disk weight sync finished without any tensor")
        for f in self.hf_config_dir.iterdir():  # config, generation config, tokenizer files
            if (
                f.is_file()
                and not f.name.endswith((".safetensors", ".bin"))
                and f.name != "model.safetensors.index.json"
            ):
                shutil.copy2(f, staging / f.name)
        (staging / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": self._index})
        )
        if self.out_dir.exists():
            old = self.out_dir.with_name(self.out_dir.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            self.out_dir.rename(old)
            staging.rename(self.out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(self.out_dir)
        self.engine.update_weights_from_disk(str(self.out_dir))
