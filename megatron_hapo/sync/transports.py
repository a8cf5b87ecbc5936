"""How a bucket of HF-named tensors reaches the rollout engine."""

from __future__ import annotations

import datetime
import gc
import json
import logging
import shutil
import socket
import tempfile
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist

from megatron_hapo.rollout.types import RolloutEngine

logger = logging.getLogger(__name__)


class Transport(Protocol):
    name: str

    def send(self, bucket: list[tuple[str, torch.Tensor]]) -> None: ...

    def finish(self) -> None:
        """Called once after the last bucket (a transport that batches work does it here)."""

    def close(self) -> None:
        """Release what the transport holds across syncs (a process group)."""


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

    def close(self):
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

    def close(self):
        pass


class DistributedTransport:
    """``update_weights_from_distributed``: broadcast from the trainer to every engine rank.

    The trainer's pushing rank is rank 0 of a group it forms with all engine ranks (world = 1 +
    engine ranks). SGLang builds its side with a ``PrefixStore(group_name, ...)`` rendezvous and
    c10d's group helper, so a plain ``init_process_group`` would hang: we join through SGLang's own
    ``init_custom_process_group``. NCCL on GPU, gloo on CPU. Only the pushing rank uses this object.

    The group's rendezvous store listens on ``master_address`` only (torch's ``TCPStore`` binds every
    interface unless handed a socket: docs/security.md).

    Lost engine ranks (a fleet server died). A broadcast into a group with a dead member wedges the
    survivors: their scheduler sits in the receive until SGLang's 30-minute default timeout and answers
    nothing, not even ``/health`` (measured, CPU/gloo). So the group is never used with a dead member:

    * before each sync the engine's rank count is compared with the group's; when it changed (the fleet
      dropped a server it found dead), the group is destroyed and re-formed, under a new name, with the
      ranks that are left, and that is logged;
    * a failure during a broadcast is bounded by ``timeout_s`` (per collective and per engine reply); the
      trainer's side of the group is destroyed at once (which releases survivors blocked on it) and the error
      propagates. The weight synchronizer then asks the engine (``recover_from_sync_failure``) whether it
      dropped dead servers and can go on; if so it sends the bucket again, and this transport re-forms the
      group with the ranks left (earlier buckets reached every survivor: each bucket ends only when every
      engine rank acknowledged it).
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
        self.group_name = group_name  # the live group's name: group_name, then group_name.2, .3, ...
        self._base_name = group_name
        self.timeout_s = timeout_s
        self._group = None
        self._world = 0
        self._generation = 0

    # -- the group -------------------------------------------------------------------------------------
    def _ensure_group(self) -> None:
        world = 1 + self.engine.num_engine_ranks
        if self._group is not None and world != self._world:
            logger.warning(
                "weight sync: the engine has %d ranks now (the group %s was formed with %d); rebuilding the "
                "group without the lost ranks",
                world - 1, self.group_name, self._world - 1,
            )  # fmt: skip
            self._drop_group(tell_engine=True)
        if self._group is not None:
            return
        from sglang.srt.utils.common import init_custom_process_group

        self._generation += 1
        self.group_name = (
            self._base_name if self._generation == 1 else f"{self._base_name}.{self._generation}"
        )
        store, port = self._rendezvous_store()
        timeout = datetime.timedelta(seconds=self.timeout_s)
        pool = ThreadPoolExecutor(max_workers=1)  # the engine side blocks until we join
        joined = pool.submit(
            self.engine.init_weights_update_group,
            self.master_address, port, 1, world, self.group_name, self.backend,
        )  # fmt: skip
        try:
            self._group = init_custom_process_group(
                backend=self.backend,
                store=dist.PrefixStore(self.group_name, store),  # what SGLang's side wraps its store in
                world_size=world,
                rank=0,
                group_name=self.group_name,
                timeout=timeout,
            )
            joined.result(timeout=self.timeout_s)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            self._drop_group(tell_engine=False)
            raise
        pool.shutdown(wait=False)
        self._world = world

    def _rendezvous_store(self) -> tuple[dist.TCPStore, int]:
        """The group's TCPStore, listening on ``master_address`` (a pre-bound socket; ``master_port`` or
        a free one)."""
        with socket.socket(socket.AF_INET6 if ":" in self.master_address else socket.AF_INET) as sock:
            sock.bind((self.master_address, self.master_port or 0))
            sock.listen(128)
            port = sock.getsockname()[1]
            store = dist.TCPStore(
                self.master_address, port, None, True,
                timeout=datetime.timedelta(seconds=self.timeout_s), wait_for_workers=False,
                master_listen_fd=sock.fileno(), use_libuv=True,
            )  # fmt: skip
            sock.detach()  # the store owns the descriptor now and closes it: never close it twice
        return store, port

    def _drop_group(self, tell_engine: bool) -> None:
        """Destroy our side of the group (this frees engine ranks blocked in one of its collectives), then,
        with ``tell_engine``, the engine's side on the ranks that are left."""
        group, self._group, self._world = self._group, None, 0
        if group is not None:
            try:
                dist.destroy_process_group(group)
            except Exception as exc:  # a group with a dead member may not tear down cleanly; ours is gone
                logger.warning("weight sync: destroying our side of %s: %s", self.group_name, exc)
        if group is not None and tell_engine:
            try:
                self.engine.destroy_weights_update_group(self.group_name)
            except Exception as exc:  # the new group has a new name: a stale old one does not block it
                logger.warning("weight sync: the engine could not destroy %s: %s", self.group_name, exc)

    # -- sending ---------------------------------------------------------------------------------------
    def send(self, bucket):
        try:
            self._ensure_group()
            self._broadcast(bucket)
        except Exception as exc:
            # The survivors blocked in the failed collective are released only when our side of the group
            # is gone, i.e. when the C++ group object is freed (gloo closes its connections then; destroy
            # alone does not). The exception's traceback holds torch's frames, which hold the group: drop
            # it (the message stays) and collect the frames' cycles, or a log record that keeps the
            # exception would keep the survivors wedged.
            exc.__traceback__ = None
            self._drop_group(tell_engine=False)
            gc.collect()
            raise

    def _broadcast(self, bucket) -> None:
        names = [n for n, _ in bucket]
        dtypes = [str(t.dtype).removeprefix("torch.") for _, t in bucket]
        shapes = [list(t.shape) for _, t in bucket]
        # the engine receives while we broadcast, in order; its reply is awaited at most timeout_s, and
        # never after a failure (a wedged engine call must not hold the trainer)
        pool = ThreadPoolExecutor(max_workers=1)
        try:
            received = pool.submit(
                self.engine.update_weights_from_distributed, names, dtypes, shapes, self.group_name
            )
            for _, tensor in bucket:
                dist.broadcast(tensor.detach().contiguous(), src=0, group=self._group)
            try:
                received.result(timeout=self.timeout_s)
            except FutureTimeout:
                raise TimeoutError(
                    f"weight sync: the engine did not acknowledge a bucket within {self.timeout_s:.0f} s "
                    "(rollout.sync_timeout_s)"
                ) from None
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def finish(self):
        pass

    def close(self) -> None:
        self._drop_group(tell_engine=True)
