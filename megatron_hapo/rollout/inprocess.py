"""SGLang ``Engine`` in the trainer's process (colocated; the CPU default and the single-node option)."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import signal
import threading
import time
import weakref
from typing import Any

import torch

from megatron_hapo.console import EngineCrashReport, fds_to, keep_root_handlers
from megatron_hapo.rollout.inflight import RequestGate
from megatron_hapo.rollout.parse import to_samples
from megatron_hapo.rollout.processes import new_child_processes, without_launcher_env
from megatron_hapo.rollout.types import (
    EngineError,
    GenerationParams,
    GroupStreamReport,
    RolloutCancelled,
    RolloutSample,
)
from megatron_hapo.stop_signals import stop_signals_blocked

logger = logging.getLogger(__name__)


def base_server_args(on_gpu: bool) -> dict[str, Any]:
    """The SGLang arguments every engine of ours starts from (the caller's arguments override them).

    ``sleep_on_idle``: an idle scheduler waits on its sockets (zmq poll, woken by the next request or weight
    update) instead of spinning. Without it every scheduler holds a CPU core at 100 % while the trainer
    trains: one core per rollout GPU on a GPU node, half the machine on a 2-core CPU one (measured: an idle
    1-server fleet, 1.01 CPU-s/s without it, 0.01 with it)."""
    return {"sleep_on_idle": True, **({} if on_gpu else cpu_server_args())}


def cpu_server_args() -> dict[str, Any]:
    """SGLang server arguments that run on a CPU-only machine (see docs/install.md and notes/sglang_cpu.md).

    ``torch_native`` attention is required (the CPU default, intel_amx, needs sgl_kernel); never set
    ``SGLANG_USE_CPU_ENGINE=1`` (it selects the AMX backend, which needs a kernel package PyPI lacks).
    """
    return {
        "device": "cpu",
        "attention_backend": "torch_native",
        "sampling_backend": "pytorch",
        "disable_cuda_graph": True,
        "disable_overlap_schedule": True,
        # an upper bound only (max_total_tokens sizes the pool); SGLang checks it against the memory other
        # processes on the machine free or take during the weight load, so leave headroom
        "mem_fraction_static": 0.2,
        "max_total_tokens": 8192,
        "skip_server_warmup": True,
    }


class InProcessSGLangEngine:
    """:class:`~megatron_hapo.rollout.types.RolloutEngine` over ``sglang.Engine``.

    The engine's scheduler runs in a child process; this object owns it. Every weight call checks
    SGLang's ``(success, message)`` reply and raises :class:`EngineError` on failure (SGLang itself
    does not raise).
    """

    name = "sglang-inprocess"

    def __init__(
        self,
        model_path: str,
        *,
        tp_size: int = 1,
        seed: int = 0,
        hapo_sampler: bool = False,
        log_level: str = "warning",
        log_file: str | os.PathLike | None = None,
        **server_args,
    ):
        if os.environ.get("SGLANG_USE_CPU_ENGINE") == "1" and not torch.cuda.is_available():
            raise EngineError(
                "unset SGLANG_USE_CPU_ENGINE: it selects SGLang's AMX backend, which needs sgl_kernel"
            )
        args = base_server_args(on_gpu=torch.cuda.is_available())
        args.update(server_args)
        self.hapo_sampler = hapo_sampler
        if hapo_sampler:  # the sglang_ext plugin's backend; every response then carries hapo_* per token
            args["sampling_backend"] = "hapo"
        logger.info(
            "starting in-process SGLang engine on %s (tp=%d, hapo sampler %s)",
            model_path,
            tp_size,
            hapo_sampler,
        )
        if log_file is not None:
            logger.info("SGLang engine output (its settings, scheduler and detokenizer) -> %s", log_file)
        # log_file: the engine's processes inherit fds 1/2 pointing at it (console.fds_to); the Engine
        # re-configures this process's root logger (basicConfig(force=True)): the trainer's is restored
        self._console_fd = None
        if log_file is not None:
            # a scheduler that dies SIGQUITs this process, which SGLang then kills: show its last words
            self._console_fd = os.dup(2)
            args.setdefault("custom_sigquit_handler", EngineCrashReport(str(log_file), self._console_fd))
        try:
            with without_launcher_env(), keep_root_handlers(), fds_to(log_file):
                self._engine = start_sglang_engine(
                    model_path=str(model_path), tp_size=tp_size, random_seed=seed, log_level=log_level, **args
                )
        except Exception:  # a stop signal's KeyboardInterrupt or SystemExit is no failure to start
            if log_file is not None:  # the scheduler's own traceback (the cause) is only there
                logger.error("the SGLang engine failed to start; its processes' output is in %s", log_file)
            raise
        self._shut_down = False
        self._tm = self._engine.tokenizer_manager
        self._leave_sigterm_to_the_process()
        self.num_engine_ranks = tp_size  # ranks that join a distributed weight-update group
        self.request_gate = RequestGate()
        self.weight_version = "default"  # SGLang's initial version string
        self.cancelled = threading.Event()  # set by cancel(): every generate raises RolloutCancelled

    def _leave_sigterm_to_the_process(self) -> None:
        """Keep SGLang's "drain and exit 0" SIGTERM path out of the trainer's process.

        At its first request SGLang's tokenizer manager registers a SIGTERM handler on the engine's event
        loop (``loop.add_signal_handler``; the loop is a uvloop) that sets ``gracefully_exit``, and starts a
        watchdog task that, within 5 s of loop time, drains the requests and calls ``sys.exit(0)``. In the
        trainer that ``SystemExit(0)`` escaped the loop: a preempted run exited 0 with no checkpoint
        (issue 17, bug 1). Taking the signal back later does not work: uvloop's ``remove_signal_handler``
        silently does nothing while the loop is not running, which is whenever the trainer is.

        So, at construction: (1) SGLang's handler class is replaced by one that leaves ``gracefully_exit``
        alone (a guard, should a handler ever be registered again), (2) the handle loop is created now,
        inside the running loop, where the registration can be removed for real, and (3) the process's
        SIGTERM handler is put back to what it was. The trainer's own handler (``trainer/shutdown.py``)
        then sees every SIGTERM. SIGQUIT (a scheduler child died) keeps SGLang's handler.
        """
        from sglang.srt.managers.tokenizer_manager import SignalHandler

        class _ProcessOwnsSigterm(SignalHandler):
            def sigterm_handler(self, signum=None, frame=None):
                logger.info("SIGTERM reached the SGLang engine's loop; the trainer's handler decides")

        self._tm.signal_handler_class = _ProcessOwnsSigterm
        if threading.current_thread() is not threading.main_thread():
            return  # SGLang registers signal handlers only from the main thread
        before = signal.getsignal(signal.SIGTERM)

        async def create_handle_loop_then_release_sigterm():
            self._tm.auto_create_handle_loop()
            asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)

        self._run(create_handle_loop_then_release_sigterm())
        signal.signal(signal.SIGTERM, before if before is not None else signal.SIG_DFL)

    # -- generation ---------------------------------------------------------------------------------
    def generate_groups(self, prompts, params, accept) -> GroupStreamReport:
        """Refused: one in-process call generates every group at once, so streaming and aborting the rest
        would save nothing (config validation refuses ``over_sample > 1`` with this engine already)."""
        raise EngineError(
            "the in-process engine cannot stream groups and abort the rest: over-sampled dynamic sampling "
            "(algorithm.dynamic_sampling.over_sample > 1) needs rollout.engine=fleet; or set over_sample=1"
        )

    def generate(self, prompts: list[list[int]], params: GenerationParams) -> list[RolloutSample]:
        params.check_engine_sampler(self.hapo_sampler, "in-process engine")
        if not prompts:
            return []
        inputs, sampling = params.sglang_requests(prompts)
        logger.info(
            "generating %d prompts x %d samples (max %d new tokens)",
            len(prompts),
            params.n,
            params.max_new_tokens,
        )
        start = time.perf_counter()
        with self.request_gate.request():
            if self.cancelled.is_set():
                raise RolloutCancelled(self.name)
            try:
                outputs = self._engine.generate(
                    input_ids=inputs,
                    sampling_params=sampling,
                    return_logprob=True,
                    return_routed_experts=params.return_routed_experts,
                )
            except Exception as exc:
                if self.cancelled.is_set():  # SGLang may answer an aborted request with an error
                    raise RolloutCancelled(self.name) from exc
                raise
        if self.cancelled.is_set():  # aborted responses, cut short: never trained on
            raise RolloutCancelled(self.name)
        samples = to_samples(
            outputs,
            prompts,
            params.n,
            require_hapo=self.hapo_sampler,
            routed_experts=params.return_routed_experts,
        )
        _log_throughput(samples, time.perf_counter() - start)
        return samples

    # -- control ----------------------------------------------------------------------------------
    def _run(self, coro):
        return self._engine.loop.run_until_complete(coro)

    # -- requests in flight ---------------------------------------------------------------------------
    # The engine's event loop is driven by the calling thread (run_until_complete): one call at a time. A
    # sync from another thread can wait for a running generate call (sync_policy=wait), not pause or
    # abort it (validation refuses those policies with this engine; rollout.engine=fleet supports them).
    def abort_requests(self) -> None:
        raise EngineError(
            "the in-process engine cannot abort a running generate call (one call at a time on its event "
            "loop): use rollout.sync_policy=wait, or rollout.engine=fleet for sync_policy=abort"
        )

    def cancel(self) -> None:
        """Abort the generate call in flight from any thread: the abort runs on the engine's event loop (driven
        by the generating thread), and again every 0.5 s while the call lasts (requests the call had not
        handed to the scheduler yet when the first abort went out)."""
        self.cancelled.set()
        if not self._shut_down:
            self._engine.loop.call_soon_threadsafe(self._abort_while_generating)

    def _abort_while_generating(self) -> None:  # on the engine's event loop
        if self.request_gate.in_flight and not self._shut_down:
            self._tm.abort_request(abort_all=True)
            self._engine.loop.call_later(0.5, self._abort_while_generating)

    def _refuse_concurrent(self, call: str) -> None:
        if self.request_gate.in_flight:
            raise EngineError(
                f"in-process engine: {call} while a generate call runs in another thread; this engine runs one "
                "call at a time: use rollout.sync_policy=wait, or rollout.engine=fleet for pause/abort"
            )

    def recover_from_sync_failure(self, exc: BaseException) -> bool:
        return False  # one engine in this process: nothing to drop and go on without

    def pause(self) -> None:
        from sglang.srt.managers.io_struct import PauseGenerationReqInput

        self._refuse_concurrent("pause")

        self._run(self._tm.pause_generation(PauseGenerationReqInput(mode="retract")))

    def resume(self) -> None:
        from sglang.srt.managers.io_struct import ContinueGenerationReqInput

        self._run(
            self._tm.continue_generation(
                ContinueGenerationReqInput(torch_empty_cache=torch.cuda.is_available())
            )
        )

    def flush_cache(self) -> None:
        _check("flush_cache", self._engine.flush_cache())

    def begin_weight_update(self) -> None:
        _check("begin_weight_update", self._engine.begin_weight_update())

    def end_weight_update(self) -> None:
        _check("end_weight_update", self._engine.end_weight_update())

    def update_weights_from_tensor(self, named_tensors: list[tuple[str, Any]]) -> None:
        _check(
            "update_weights_from_tensor",
            self._engine.update_weights_from_tensor(named_tensors, flush_cache=False),
        )

    def update_weights_from_disk(self, hf_dir: str) -> None:
        _check("update_weights_from_disk", self._engine.update_weights_from_disk(str(hf_dir)))

    def init_weights_update_group(
        self, master_address, master_port, rank_offset, world_size, group_name, backend
    ):
        reply = self._engine.init_weights_update_group(
            master_address, master_port, rank_offset, world_size, group_name, backend
        )
        _check("init_weights_update_group", reply)

    def update_weights_from_distributed(self, names, dtypes, shapes, group_name) -> None:
        reply = self._engine.update_weights_from_distributed(
            names, dtypes, shapes, group_name, flush_cache=False
        )
        _check("update_weights_from_distributed", reply)

    def destroy_weights_update_group(self, group_name) -> None:
        _check("destroy_weights_update_group", self._engine.destroy_weights_update_group(group_name))

    def set_weight_version(self, version: str) -> None:
        from sglang.srt.managers.io_struct import UpdateWeightVersionReqInput

        self._run(
            self._tm.update_weight_version(
                UpdateWeightVersionReqInput(new_version=str(version), abort_all_requests=False)
            )
        )
        self.weight_version = str(version)

    def get_weight(self, hf_name: str, truncate_size: int = 10**9) -> torch.Tensor:
        """Read a parameter back from the engine (for sync tests and the log-prob doctor)."""
        values = self._engine.get_weights_by_name(hf_name, truncate_size=truncate_size)
        if values is None:  # SGLang answers None and logs the reason
            raise EngineError(f"the in-process engine could not read back {hf_name!r} (the reason is logged)")
        return torch.as_tensor(values)

    def server_settings(self) -> list[dict[str, Any]]:
        return [self._engine.get_server_info()]

    def health(self) -> bool:
        try:
            self._engine.get_server_info()
        except Exception:  # a dead scheduler surfaces as any exception here
            return False
        return True

    def shutdown(self) -> None:
        """Stop the engine's processes (only those, not this process's other children); idempotent."""
        if self._shut_down:
            return
        self._shut_down = True
        shutdown_sglang_engine(self._engine)
        if self._console_fd is not None:
            os.close(self._console_fd)
            self._console_fd = None


# the processes each engine of start_sglang_engine started (its schedulers, its detokenizer)
_ENGINE_PROCESSES: weakref.WeakKeyDictionary[Any, list[int]] = weakref.WeakKeyDictionary()


def start_sglang_engine(**engine_args):
    """``sglang.Engine(**engine_args)``, remembering the processes it starts for :func:`shutdown_sglang_engine`."""
    import sglang as sgl

    # its processes start with SIGINT/SIGTERM blocked: a Ctrl-C or torchrun's SIGTERM is the caller's to handle
    with new_child_processes() as pids, stop_signals_blocked():
        engine = sgl.Engine(**engine_args)
    _ENGINE_PROCESSES[engine] = pids
    return engine


def shutdown_sglang_engine(engine) -> None:
    """``engine.shutdown()`` for an engine of :func:`start_sglang_engine`, stopping only its own processes,
    and only once.

    * SGLang's shutdown ends with ``kill_process_tree(os.getpid(), include_parent=False)``: a SIGKILL to every
      child of the calling process, whoever started it (the trainer's scorer pool, multiprocessing's resource
      tracker, a user's own workers). Here that one call kills the trees of the engine's own processes
      instead; every other call of SGLang's goes through unchanged.
    * SGLang also registers the shutdown with atexit, where it would run again at exit and log to handlers
      that may be closed by then (pytest's captured streams: "--- Logging error ---" tracebacks after the
      run).
    * Killed, the engine's processes leave their shared memory and socket files: :func:`_remove_engine_files`."""
    import psutil
    from sglang.srt.entrypoints import engine as engine_module

    pids = _ENGINE_PROCESSES.pop(engine, None)
    if pids is None:
        raise EngineError(
            "shutdown_sglang_engine: not an engine of start_sglang_engine, or already shut down"
        )
    sglang_kill = engine_module.kill_process_tree  # AttributeError: SGLang changed; see the docstring

    def kill_engine_processes(parent_pid, include_parent=True, skip_pid=None, wait_timeout=60):
        if parent_pid != os.getpid() or include_parent:
            return sglang_kill(
                parent_pid, include_parent=include_parent, skip_pid=skip_pid, wait_timeout=wait_timeout
            )
        children = {p.pid for p in psutil.Process().children()}  # a pid that died may have been reused
        for pid in pids:
            if pid in children:
                sglang_kill(pid, include_parent=True, wait_timeout=wait_timeout)

    engine_module.kill_process_tree = kill_engine_processes
    try:
        engine.shutdown()
    finally:
        engine_module.kill_process_tree = sglang_kill
    atexit.unregister(engine.shutdown)
    removed = _remove_engine_files(engine.port_args)
    logger.info("SGLang engine shut down: its processes %s stopped, %d files removed", pids, removed)


def _remove_engine_files(port_args) -> int:
    """Remove what the engine's killed processes would have removed on a clean exit, and return how many
    files that was: the load-snapshot shared memory (``/dev/shm/sglang_loads_*``, 24 KB) and the socket files
    of its ZMQ channels (``ipc://`` names, ``/tmp/tmp*``). SGLang's shutdown SIGKILLs them, so each engine
    left these behind (its own CI sweeps them: ``sglang/srt/utils/stale_shm_cleanup.py``)."""
    from sglang.srt.managers.load_snapshot import shm_path_for

    paths = [shm_path_for(port_args.instance_id)] if port_args.instance_id else []
    paths += [
        v.removeprefix("ipc://")
        for v in vars(port_args).values()
        if isinstance(v, str) and v.startswith("ipc://")
    ]
    removed = 0
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
            removed += 1
    return removed


def _log_throughput(samples: list[RolloutSample], seconds: float) -> None:
    tokens = sum(len(s.response_ids) for s in samples)
    logger.info(
        "generated %d samples, %d tokens in %.1f s (%.0f tok/s)",
        len(samples),
        tokens,
        seconds,
        tokens / max(seconds, 1e-9),
    )


def _check(call: str, reply) -> None:
    """SGLang weight calls return ``(success, message)`` (or an object with those) instead of raising."""
    if reply is None:
        return
    success, message = (reply.success, reply.message) if hasattr(reply, "success") else (reply[0], reply[1])
    if not success:
        raise EngineError(f"SGLang {call} failed: {message}")
