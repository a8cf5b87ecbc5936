"""SGLang server arguments derived from the run config (shared by the in-process engine and the fleet).

``engine_server_args(cfg)`` is the single place that turns ``model.*`` / ``rollout.*`` keys into SGLang
``ServerArgs`` fields; machine-dependent sizing (``mem_fraction_static``, CPU KV-cache size) stays with the
engine that knows the machine. Any other field comes from ``rollout.server_args`` (hapo-eval: ``--server-arg``),
checked against SGLang's declaration of the fields (``server_args_problems``) and read back from the running
engine (``report_server_args``).

FP8 rollout (``rollout.quantization=fp8``), read from SGLang 0.5.23's sources:

* ``quantization="fp8"`` on a bf16 checkpoint builds ``Fp8Config()`` with ``is_checkpoint_fp8_serialized=False``
  and no ``weight_block_size`` (``sglang/srt/model_loader/weight_utils.py::get_quant_config``, the
  ``return quant_cls()`` branch), so SGLang quantises *online* in ``Fp8LinearMethod.process_weights_after_loading``
  (``sglang/srt/layers/quantization/fp8.py`` ~l.1142-1174): per-channel scales when the CUTLASS/Marlin kernels are
  used, else per-tensor (``input_to_float8``), dynamic activation scales. That is not TE's 128x128 blockwise
  recipe: blockwise FP8 serving needs an FP8-serialised checkpoint with ``weight_block_size`` (fp8.py l.302-306
  rejects blockwise otherwise).
* ``update_weights_from_tensor`` only calls ``model.load_weights`` (``model_runner_components/weight_updater.py``
  ``update_weights_from_tensor``); ``end_weight_update`` re-runs ``process_weights_after_loading``
  (``DefaultModelLoader.postprocess_weights``). With the default loader that path is broken for online FP8: the
  first ``process_weights_after_loading`` replaced each linear's ``weight`` by a new FP8, transposed ``Parameter``
  without its ``weight_loader``, so bf16 tensors pushed later cannot be loaded into it (and a second
  post-process would quantise already-FP8 data). SGLang's answer is the FlashRL loader,
  ``load_format="flash_rl"`` (``model_loader/loader.py::QuantizedRLModelLoader``): it records the native
  loaders at the initial load and, on every later ``load_weights``, quantises the pushed bf16 rows into the
  existing FP8 weight/scale buffers (``rebinding_and_load_weights``), skipping the post-process on reload. So
  *SGLang re-quantises on load* when, and only when, ``load_format="flash_rl"`` is used; it supports Qwen2/2.5
  and Qwen3 native loaders and rejects others (Llama) at start-up with a ValueError.

Hence ``rollout.quantization=fp8`` maps to ``quantization="fp8", load_format="flash_rl"`` and the trainer keeps
pushing bf16 tensors; TIS is turned on by the config (``RootConfig.__post_init__``), and ``tis/*`` metrics log
the train-vs-rollout log-prob mismatch every step. docs/fp8.md has the details.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import shutil
import socket
import typing
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from megatron_hapo.rollout.types import EngineError

if TYPE_CHECKING:
    from megatron_hapo.rollout.fleet import FleetConfig

logger = logging.getLogger(__name__)

# SGLang load format that re-quantises weights pushed by update_weights_from_tensor into FP8 (see above).
FP8_RL_LOAD_FORMAT = "flash_rl"

# The ServerArgs fields this project sets itself, and what sets each: ``rollout.server_args`` may not.
OWNED_SERVER_ARGS: dict[str, str] = {
    "model_path": "model.hf_path",
    "tokenizer_path": "model.hf_path (the checkpoint's tokenizer)",
    "dtype": "model.dtype",
    "load_format": "model.load_weights and rollout.quantization",
    "quantization": "rollout.quantization",
    "json_model_override_args": "model.override_config",
    "enable_return_routed_experts": "algorithm.rollout_routing_replay",
    "tp_size": "rollout.tensor_parallel_size",
    "mem_fraction_static": "rollout.mem_fraction",
    "random_seed": "trainer.seed",
    "host": "rollout.bind_host",
    "port": "the fleet (a free port per server)",
    "nccl_port": "the fleet (a free port per server)",
    "base_gpu_id": "the fleet's GPU placement (rollout/placement.py)",
    "device": "the machine (cuda, or cpu without a GPU)",
    "sampling_backend": "the HAPO sampler (algorithm.adaptive_temperature.enable, rollout.seeded_sampling)",
    "api_key": "rollout.api_key_env",
}


def server_args_problems(
    extra: Mapping[str, Any], owned: Mapping[str, str] = OWNED_SERVER_ARGS
) -> tuple[dict[str, Any], dict[str, str]]:
    """``rollout.server_args`` (or hapo-eval's ``--server-arg``) checked against SGLang's own declaration of
    ``ServerArgs`` (names, types, choices): ``(values converted to the fields' types, {field: what is wrong})``.
    ``owned``: the fields the caller sets itself, each with what sets it. SGLang checks the combination of values
    itself when the engine starts."""
    import msgspec
    from sglang.srt.server_args import ServerArgs

    fields = {f.name: f for f in msgspec.structs.fields(ServerArgs)}
    values: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for name, value in extra.items():
        if name in owned:
            problems[name] = f"is set by this project from {owned[name]}: set that instead"
            continue
        if name not in fields:
            close = difflib.get_close_matches(name, list(fields), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            problems[name] = (
                f"is not an SGLang server argument{hint}; see python -m sglang.launch_server --help"
            )
            continue
        field = fields[name]
        kind, *meta = (
            typing.get_args(field.type)
            if typing.get_origin(field.type) is typing.Annotated
            else (field.type,)
        )
        try:
            converted = msgspec.convert(value, kind, strict=False)
        except msgspec.ValidationError as exc:
            problems[name] = f"{value!r} is not a valid value: {exc} (SGLang declares it {kind})"
            continue
        choices = next((m.choices for m in meta if getattr(m, "choices", None)), None)
        if choices and converted not in choices:
            problems[name] = f"{value!r} is not one of {', '.join(map(str, choices))}"
        elif converted is False and field.default is not False:
            # a launched server takes a boolean as a flag, present or absent: absent is SGLang's default
            problems[name] = (
                f"false cannot reach a launched server's command line (SGLang's default is {field.default!r}): "
                "leave it out or set true"
            )
        else:
            values[name] = converted
    return values, problems


def report_server_args(requested: Mapping[str, Any], engine: Any, source: str) -> None:
    """Log whether ``engine`` (a ``RolloutEngine``) runs with the ServerArgs values ``requested`` by ``source``
    (``rollout.server_args``, ``--server-arg``); warn, naming each, about those SGLang changed while resolving its
    arguments."""
    differing = settings_differing(requested, engine.server_settings())
    for line in differing:
        logger.warning("%s %s (SGLang changed it while resolving its arguments)", source, line)
    if not differing:
        given = ", ".join(f"{k}={v}" for k, v in requested.items())
        logger.info("the rollout engine runs with %s as given: %s", source, given)


def settings_differing(requested: Mapping[str, Any], settings: list[dict[str, Any]]) -> list[str]:
    """The requested ServerArgs values that an engine or server does not run with, one line each: SGLang adjusts
    some fields while resolving its arguments (for the device, the model, other fields). ``settings``:
    :meth:`~megatron_hapo.rollout.types.RolloutEngine.server_settings`."""
    wanted = server_args_problems(requested, owned={})[0]
    differing = []
    for i, running in enumerate(settings):
        for name, value in wanted.items():
            got = running.get(name)
            if _plain(got, name) != _plain(value, name):
                differing.append(f"{name}: asked {value!r}, engine {i} runs with {got!r}")
    return differing


def _plain(value: Any, name: str = "") -> Any:
    """``value`` as compared with a running server's: a tuple as a list, model overrides as the JSON they hold."""
    if name == "json_model_override_args" and isinstance(value, str):
        return json.loads(value or "{}")
    return list(value) if isinstance(value, tuple) else value


def engine_server_args(cfg: Any) -> dict[str, Any]:
    """SGLang ``ServerArgs`` kwargs derived from ``cfg`` (a ``RootConfig``).

    * ``dtype``: ``model.dtype`` (activations and unquantised layers);
    * ``load_format="dummy"`` when ``model.load_weights`` is false (the real weights arrive by the first sync);
    * ``rollout.quantization=fp8``: ``quantization="fp8"`` and ``load_format="flash_rl"`` (replaces ``dummy``:
      the FlashRL loader needs a real initial load from ``model.hf_path`` to record the native loaders it
      re-quantises through on every sync);
    * ``algorithm.rollout_routing_replay``: ``enable_return_routed_experts`` (SGLang records every token's
      experts; requests ask for them with ``return_routed_experts``);
    * ``rollout.server_args``: any other field, as given (checked by :func:`server_args_problems`; config
      validation reports the problems, naming the keys).
    """
    values, problems = server_args_problems(cfg.rollout.server_args) if cfg.rollout.server_args else ({}, {})
    if problems:
        raise ValueError("; ".join(f"rollout.server_args.{k} {v}" for k, v in problems.items()))
    args: dict[str, Any] = {**values, "dtype": cfg.model.dtype}
    if cfg.algorithm.rollout_routing_replay:
        args["enable_return_routed_experts"] = True
    if (
        cfg.model.override_config
    ):  # the engine serves the model the trainer builds (SGLang applies it on load)
        args["json_model_override_args"] = json.dumps(dict(cfg.model.override_config))
    if not cfg.model.load_weights:
        args["load_format"] = "dummy"
    quant = getattr(cfg.rollout, "quantization", None)
    if quant is None:
        return args
    if quant != "fp8":
        raise ValueError(f"rollout.quantization must be fp8 or null, got {quant!r}")
    if cfg.rollout.fp8_format == "blockwise":
        # the engine starts from the FP8 copy (rollout_model_path) with its real weights: SGLang reads the
        # block size from its quantization_config; every sync then sends FP8 weights + block scales
        args.pop("load_format", None)
        args["quantization"] = "fp8"
        return args
    if args.get("load_format") == "dummy":
        logger.info(
            "rollout.quantization=fp8: SGLang loads %s for real (load_format=flash_rl, not dummy) so that "
            "weight syncs can be re-quantised to FP8",
            cfg.model.hf_path,
        )
    args.update(quantization="fp8", load_format=FP8_RL_LOAD_FORMAT)
    return args


# What an attached server must run with besides ``engine_server_args``, when the run's config does not set it:
# SGLang's defaults. A server quantised, or with model overrides, that the run did not ask for serves another
# model than the trainer trains.
_UNSET_SERVER_ARGS = {"quantization": None, "json_model_override_args": "{}"}


def required_server_settings(cfg: Any) -> dict[str, Any]:
    """The ServerArgs values every server of a run must run with (``cfg``: a ``RootConfig``): what
    :func:`engine_server_args` derives, the server TP size (the weight-sync group counts
    ``rollout.tensor_parallel_size`` ranks per server), and SGLang's defaults for the model-changing fields the
    config leaves unset. Not the load format ``dummy`` (the first sync brings the weights), and not the sampler
    (a response without the HAPO sampler's outputs fails the step: ``HapoSamplerMissingError``)."""
    required = {**_UNSET_SERVER_ARGS, **engine_server_args(cfg), "tp_size": cfg.rollout.tensor_parallel_size}
    if required.get("load_format") == "dummy":
        del required["load_format"]
    return required


def attached_server_problems(
    required: Mapping[str, Any], settings: list[dict[str, Any]], urls: list[str]
) -> list[str]:
    """One line per field in which a running server (``settings[i]``, its ``/server_info``, at ``urls[i]``)
    differs from ``required`` (:func:`required_server_settings`), naming the config key that sets the field."""
    problems = []
    for url, running in zip(urls, settings, strict=True):
        for name, value in required.items():
            got = running.get(name)
            if _plain(got, name) != _plain(value, name):
                key = OWNED_SERVER_ARGS.get(name, f"rollout.server_args.{name}")
                problems.append(f"{url} runs with {name}={got!r}, the run needs {value!r} ({key})")
    return problems


def rollout_model_path(cfg: Any, run_dir: str | Path) -> str:
    """The checkpoint the rollout engine starts from: ``model.hf_path``, or with blockwise FP8 rollout an FP8
    copy of it written once to ``<run_dir>/rollout_fp8_blockwise`` (SGLang's blockwise format): by the lead rank,
    or by ``hapo-serve`` on each rollout node, where several may find it missing at once on a shared file system.
    Each writes a temporary folder of its own and renames it into place; the first rename wins, and the others
    remove theirs and serve the winner's (the same bytes: the export is deterministic). A temporary folder that a
    killed writer on this host left is removed."""
    if cfg.rollout.quantization != "fp8" or cfg.rollout.fp8_format != "blockwise":
        return str(cfg.model.hf_path)
    from megatron_hapo.fp8_export.blockwise import export_fp8_blockwise

    out = Path(run_dir) / "rollout_fp8_blockwise"
    _remove_dead_writers_copies(out)
    if out.is_dir():
        return str(out)
    tmp = out.with_name(f"{out.name}.tmp-{socket.gethostname()}-{os.getpid()}")
    report = export_fp8_blockwise(cfg.model.hf_path, tmp, tp_size=cfg.rollout.tensor_parallel_size)
    try:
        # onto an existing folder an error, never a merge: the winner's copy stays whole
        os.rename(tmp, out)
    except OSError:
        if not out.is_dir():
            raise
        shutil.rmtree(tmp)
        logger.info(
            "blockwise FP8 serving copy of %s: %s, written meanwhile by another process",
            cfg.model.hf_path,
            out,
        )
        return str(out)
    logger.info(
        "blockwise FP8 serving copy of %s: %s (%d linears, %.2f GB)",
        cfg.model.hf_path, out, report.quantized_linears, report.bytes_out / 1e9,
    )  # fmt: skip
    return str(out)


def _remove_dead_writers_copies(out: Path) -> None:
    """Remove the temporary folders (``<out>.tmp-<host>-<pid>``) that writers on this host left when they were
    killed mid-export: a model-sized copy each, never renamed into place. Only this host's, and only those whose
    process is gone (a live writer's folder stays, and another host's processes cannot be checked from here)."""
    prefix = f"{out.name}.tmp-{socket.gethostname()}-"
    for tmp in out.parent.glob(f"{prefix}*"):
        pid = tmp.name.removeprefix(prefix)  # not digits: another host whose name extends this one's
        if not pid.isdigit() or (int(pid) != os.getpid() and _process_alive(int(pid))):
            continue
        shutil.rmtree(tmp, ignore_errors=True)
        logger.info("removed %s, an unfinished FP8 serving copy left by process %s on this host", tmp, pid)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def uses_hapo_sampler(cfg: Any) -> bool:
    """The HAPO sampler serves adaptive temperatures and per-request seeds (stock SGLang honours seeds
    only in its deterministic mode, which CPU and the HAPO sampler cannot use)."""
    return cfg.algorithm.adaptive_temperature.enable or cfg.rollout.seeded_sampling


def fleet_config(cfg: Any, run_dir, *, launching: bool = True) -> FleetConfig:
    """The fleet a run launches: its servers' arguments, sampler, seeds, timeouts and key. ``hapo-serve``
    launches servers from this too, so that a fleet on nodes of its own runs as a launched one would.
    ``launching=False``: a fleet that only attaches (hapo-serve's router) needs no model path, so no FP8 serving
    copy is written for it."""
    import torch

    from megatron_hapo.rollout.fleet import FleetConfig

    r = cfg.rollout
    args = engine_server_args(cfg)
    if torch.cuda.is_available():  # on CPU, cpu_server_args() sizes the KV cache
        args["mem_fraction_static"] = r.mem_fraction
    return FleetConfig(
        model_path=rollout_model_path(cfg, run_dir) if launching else str(cfg.model.hf_path),
        num_servers=r.num_servers,
        tp_size=r.tensor_parallel_size,
        startup_timeout_s=r.startup_timeout_s,
        request_timeout_s=r.request_timeout_s,
        max_retries=r.max_retries,
        on_server_failure=r.on_server_failure,
        hapo_sampler=uses_hapo_sampler(cfg),
        progress=False,
        log_dir=str(Path(run_dir) / "fleet_logs") if run_dir is not None else None,
        seed=cfg.trainer.seed,
        server_args=args,
        host=r.bind_host,
        sync_timeout_s=r.sync_timeout_s,
        api_key=os.environ.get(r.api_key_env) or None,  # the key itself never enters the config
    )


def check_attached_servers(cfg: Any, attached: FleetConfig) -> None:
    """Refuse the servers ``attached`` names (its ``attach_urls``, or its router's workers) when they run otherwise
    than ``cfg`` would launch them (another dtype, TP size, quantisation, model overrides or
    ``rollout.server_args``): they would serve another model or precision than the trainer assumes, with no error
    until the numbers drift. Call it before the fleet that starts a router in front of them."""
    from megatron_hapo.rollout.fleet import SGLangFleet

    if not attached.attach_urls and not attached.router_url:  # the fleet would launch servers of its own
        raise EngineError(
            "no rollout server to check: the attached fleet names no server address and no router"
        )
    fleet = SGLangFleet(replace(attached, router=False))  # attaches: launches nothing
    urls = [s.url for s in fleet.servers]
    problems = attached_server_problems(required_server_settings(cfg), fleet.server_settings(), urls)
    if problems:
        raise EngineError(
            "the attached rollout servers do not run as this run's config asks: "
            + "; ".join(problems)
            + ". Start them from the same config: hapo-serve --config <this config> [the same overrides] on "
            "each rollout node (docs/rollout.md, 'A fleet on nodes of its own')"
        )
    logger.info("the attached rollout servers run as the config asks: %s", ", ".join(urls))
