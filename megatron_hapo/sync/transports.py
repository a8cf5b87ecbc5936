"""How a bucket of HF-named tensors reaches the rollout engine."""

from __future__ import annotations

import datetime
import json
import shutil
import socket
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist

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


class DistributedTransport:
    """``update_weights_from_distributed``: broadcast from the trainer to every engine rank.

    The trainer's pushing rank is rank 0 of a group it forms with all engine ranks (world = 1 +
    engine ranks). SGLang builds its side with a ``PrefixStore(group_name, ...)`` rendezvous and
    c10d's group helper, so a plain ``init_process_group`` would hang: we join through SGLang's own
    ``init_custom_process_group``. NCCL on GPU, gloo on CPU. Only the pushing rank uses this object.
    """

    name = "distributed"

    def __init__(
        self,
        engine: RolloutEngine,
        master_address: str = "127.0.0.1",
        master_port: int | None = None,
        backend: str | None = None,
        group_name: str = "hapo_weight_sync",
        timeout_s: float = 600.0,
    ):
        self.engine = engine
        self.master_address = master_address
        self.master_port = master_port
        self.backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        self.group_name = group_name
        self.timeout_s = timeout_s
        self._group = None

    def _ensure_group(self) -> None:
        if self._group is not None:
            return
        from sglang.srt.utils.common import init_custom_process_group

        port = self.master_port or _free_port(self.master_address)
        world = 1 + self.engine.num_engine_ranks
        with ThreadPoolExecutor(max_workers=1) as pool:  # the engine side blocks until we join
            joined = pool.submit(
                self.engine.init_weights_update_group,
                self.master_address,
                port,
                1,
                world,
                self.group_name,
                self.backend,
            )
            self._group = init_custom_process_group(
                backend=self.backend,
                init_method=f"tcp://{self.master_address}:{port}",
                world_size=world,
                rank=0,
                group_name=self.group_name,
                timeout=datetime.timedelta(seconds=self.timeout_s),
            )
            joined.result(timeout=self.timeout_s)

    def send(self, bucket):
        self._ensure_group()
        names = [n for n, _ in bucket]
        dtypes = [str(t.dtype).removeprefix("torch.") for _, t in bucket]
        shapes = [list(t.shape) for _, t in bucket]
        with ThreadPoolExecutor(max_workers=1) as pool:  # the engine receives while we broadcast, in order
            received = pool.submit(
                self.engine.update_weights_from_distributed, names, dtypes, shapes, self.group_name
            )
            for _, tensor in bucket:
                dist.broadcast(tensor.detach().contiguous(), src=0, group=self._group)
            received.result(timeout=self.timeout_s)

    def finish(self):
        pass

    def close(self) -> None:
        if self._group is not None:
            self.engine.destroy_weights_update_group(self.group_name)
            dist.destroy_process_group(self._group)
            self._group = None


def transport_for(engine: RolloutEngine) -> Transport:
    """The transport that reaches ``engine``: the engine's own ``weight_transport()`` when it has one
    (a fleet of servers picks distributed or disk sync), else :class:`TensorTransport` (a colocated
    engine, whose ``update_weights_from_tensor`` is the fast path)."""
    own = getattr(engine, "weight_transport", None)
    return own() if own is not None else TensorTransport(engine)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
