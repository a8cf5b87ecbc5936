"""Registration of the HAPO sampler with SGLang, and the checks that it is really the one running.

How HAPO sampling is requested for a server (either is enough):

* ``--sampling-backend hapo`` (``sampling_backend="hapo"`` for ``sgl.Engine``);
* ``HAPO_SGLANG_SAMPLER=1`` in the server's environment (spawned scheduler processes inherit it).

SGLang silently rewrites ``--sampling-backend`` to ``pytorch`` on CPU and in deterministic mode, so the
plugin also registers factories under the built-in names ``pytorch`` and ``flashinfer``. Those factories
return SGLang's stock ``Sampler`` unless HAPO was requested (by the variable, or by ``hapo`` in the raw
server arguments, which SGLang keeps next to the rewritten value), in which case they return the HAPO
sampler running that built-in backend's kernels. Without a request, sampling does not change.

Every server with the plugin installed also answers ``get_weights_by_name`` for model classes SGLang
cannot read back (``sglang_ext/read_back.py``): the trainer verifies each weight sync that way.

Fail-loud rules:

* HAPO requested, but the sampler SGLang creates is not the HAPO one (another plugin overrode the
  backend, the backend is not one HAPO can wrap), the plugin's hooks were not applied, or the server is
  configured with something HAPO cannot serve (speculative decoding, watermarking,
  ``SGLANG_RETURN_ORIGINAL_LOGPROB=1``): the scheduler raises, so the server refuses to start.
* A request that enables HAPO on a server that did not request it, or sends malformed parameters, is
  rejected when SGLang validates its sampling params (a clear error to the client).
* HAPO requested by the variable but the plugin cannot load: ``SystemExit`` (SGLang's plugin loader only
  logs ``Exception``\\ s and would otherwise start a stock server).
"""

from __future__ import annotations

import functools
import logging
import os
from types import SimpleNamespace

logger = logging.getLogger(__name__)

ENV_VAR = "HAPO_SGLANG_SAMPLER"
BACKEND_NAME = "hapo"
_OVERRIDDEN_BUILTINS = ("pytorch", "flashinfer")  # the built-in names whose kernels HAPO can reuse
_CREATE_SAMPLER = "sglang.srt.layers.sampler.create_sampler"
_VERIFY_PARAMS = "sglang.srt.sampling.sampling_params.SamplingParams.verify"


class HapoSamplerNotInstalledError(RuntimeError):
    """HAPO sampling was requested for this server, but the sampler SGLang uses is not the HAPO one."""


def env_requested() -> bool:
    """``HAPO_SGLANG_SAMPLER``: 1/true/yes/on -> True; unset, empty, 0/false/no/off -> False; else an error."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{ENV_VAR}={os.environ[ENV_VAR]!r}: expected 1/true/yes/on or 0/false/no/off")


def hapo_requested(server_args) -> str | None:
    """Why HAPO sampling is requested for this server (a short reason), or None when it is not."""
    if env_requested():
        return f"{ENV_VAR}=1"
    if server_args is None:
        return None
    raw = (getattr(server_args, "_raw_input", None) or {}).get("sampling_backend")
    if BACKEND_NAME in (raw, getattr(server_args, "sampling_backend", None)):
        return f"--sampling-backend {BACKEND_NAME}"
    return None


def _server_args():
    from sglang.srt.runtime_context import get_server_args

    try:
        return get_server_args()
    except (AttributeError, ValueError):  # nothing published yet (unit tests without a context)
        return None


def check_supported(server_args) -> None:
    """Configurations in which the HAPO sampler cannot do its job: refuse them instead of degrading."""
    from sglang.srt.layers import sampler as sglang_sampler

    server_args = server_args if server_args is not None else SimpleNamespace()
    problems = []
    if getattr(server_args, "speculative_algorithm", None):
        problems.append(f"speculative decoding ({server_args.speculative_algorithm}) samples outside Sampler")
    if getattr(server_args, "enable_watermark", False):
        problems.append("watermarking rescores log-probs at the request temperature")
    if sglang_sampler.SGLANG_RETURN_ORIGINAL_LOGPROB:
        # SGLang would return log_softmax(z) at T = 1: not the behaviour log-prob the trainer relies on.
        problems.append(
            "SGLANG_RETURN_ORIGINAL_LOGPROB=1 makes SGLang return log-probs at T = 1, not under the sampled T_t"
        )
    if problems:
        raise HapoSamplerNotInstalledError("HAPO sampler requested, but " + "; ".join(problems))
    if getattr(server_args, "enable_custom_logit_processor", False):
        logger.warning(
            "HAPO sampler: --enable-custom-logit-processor is on, so clients can run code on this server; "
            "HAPO does not need it"
        )


def hook_targets() -> list[str]:
    from sglang_ext.batch_state import BATCH_HOOKS
    from sglang_ext.outputs import OUTPUT_HOOKS
    from sglang_ext.seeded import HOOK_TARGET as SEEDED_HASH

    return [*BATCH_HOOKS, *OUTPUT_HOOKS, _CREATE_SAMPLER, _VERIFY_PARAMS, SEEDED_HASH]


def _check_hooks_applied() -> None:
    """SGLang's HookRegistry logs (and skips) a hook it cannot apply, e.g. a method renamed by an SGLang
    upgrade; without the batch hooks the requests' HAPO parameters would silently never reach the sampler."""
    from sglang.srt.plugins.hook_registry import HookRegistry

    missing = [t for t in hook_targets() if t not in HookRegistry._patched]
    if missing:
        raise HapoSamplerNotInstalledError(
            f"HAPO sampler requested, but SGLang did not apply the plugin's hooks on {missing} (see the "
            "'Failed to apply hooks' log lines; this SGLang version may not match the pinned 0.5.23)"
        )


def _inner_backend(configured: str | None) -> str:
    if configured in _OVERRIDDEN_BUILTINS:
        return configured
    from sglang.srt.runtime_context import get_platform

    return "flashinfer" if get_platform().has_flashinfer else "pytorch"


def make_hapo_sampler(configured_backend: str | None = None):
    """Factory behind ``--sampling-backend hapo``: always the HAPO sampler."""
    from megatron_hapo.algorithms import entropy_kernel
    from sglang_ext.sampler import HapoSampler

    server_args = _server_args()
    check_supported(server_args)
    _check_hooks_applied()
    inner = _inner_backend(configured_backend)
    logger.warning(
        "HAPO adaptive-temperature sampler active (%s; sampling kernels: %s; entropy: %s)",
        hapo_requested(server_args) or f"--sampling-backend {BACKEND_NAME}",
        inner,
        entropy_kernel(getattr(server_args, "device", None) or "cpu"),
    )
    return HapoSampler(inner)


def make_builtin_sampler(backend: str):
    """Factory registered under a built-in name: HAPO when requested for this server, stock otherwise."""
    from sglang.srt.layers.sampler import Sampler

    if hapo_requested(_server_args()) is None:
        return Sampler()  # exactly what create_sampler() builds for a built-in name
    return make_hapo_sampler(backend)


def verify_created_sampler(sampler, *args, **kwargs):
    """AFTER hook on ``create_sampler``: the sampler must be the HAPO one whenever HAPO was requested."""
    from sglang_ext.sampler import HapoSampler

    reason = hapo_requested(_server_args())
    if reason is not None and not isinstance(sampler, HapoSampler):
        raise HapoSamplerNotInstalledError(
            f"HAPO sampling was requested ({reason}) but SGLang created {type(sampler).__module__}."
            f"{type(sampler).__qualname__}: another plugin may have registered the same sampling backend, or "
            f"the backend is not one of {(BACKEND_NAME, *_OVERRIDDEN_BUILTINS)}. Refusing to start."
        )
    return sampler


def validate_sampling_params(sampling_params, *args, **kwargs):
    """BEFORE hook on ``SamplingParams.verify`` (tokenizer side): reject bad or unservable HAPO requests."""
    from sglang_ext.params import parse_row

    row = parse_row(sampling_params.custom_params)  # HapoParamsError is a ValueError -> client error
    if row.enabled and hapo_requested(_server_args()) is None:
        raise ValueError(
            'custom_params["hapo"] enables HAPO sampling, but this SGLang server does not run the HAPO '
            f"sampler (start it with {ENV_VAR}=1 or --sampling-backend {BACKEND_NAME})"
        )


_registered = False


def register() -> None:
    """Entry point of the ``sglang.srt.plugins`` group; also safe to call by hand (idempotent)."""
    global _registered
    if _registered:
        return
    try:
        requested = env_requested()
    except ValueError as exc:
        raise SystemExit(f"megatron-hapo SGLang plugin: {exc}") from exc
    try:
        _register()
    except Exception as exc:
        if requested:
            # SGLang's loader would log this and start a stock server: not acceptable when HAPO was asked for.
            raise SystemExit(
                f"megatron-hapo SGLang plugin failed to load while {ENV_VAR}=1: {exc!r}"
            ) from exc
        raise
    _registered = True
    if requested:
        logger.info("HAPO sampler plugin registered; %s=1: built-in sampling backends become HAPO", ENV_VAR)


def _register() -> None:
    from sglang.srt.layers.sampler import register_sampler_backend
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType, _current_plugin_source

    import sglang_ext.sampler  # noqa: F401  (fail here, at start-up, if the schedule cannot be imported)
    from sglang_ext import host_memory, read_back, seeded
    from sglang_ext.batch_state import BATCH_HOOKS
    from sglang_ext.outputs import OUTPUT_HOOKS

    register_sampler_backend(BACKEND_NAME, make_hapo_sampler)
    for name in _OVERRIDDEN_BUILTINS:
        register_sampler_backend(name, functools.partial(make_builtin_sampler, name))

    for target, hook in BATCH_HOOKS.items():
        HookRegistry.register(target, hook, HookType.AFTER)
    for target, hook in OUTPUT_HOOKS.items():
        HookRegistry.register(target, hook, HookType.BEFORE)
    HookRegistry.register(_CREATE_SAMPLER, verify_created_sampler, HookType.AFTER)
    HookRegistry.register(_VERIFY_PARAMS, validate_sampling_params, HookType.BEFORE)
    HookRegistry.register(seeded.HOOK_TARGET, seeded.murmur_hash32_hook, HookType.AROUND)
    HookRegistry.register(read_back.HOOK_TARGET, read_back.get_weights_by_name_hook, HookType.AROUND)
    HookRegistry.register(host_memory.HOOK_TARGET, host_memory.cuda_host_register_hook, HookType.AROUND)
    if _current_plugin_source.get() is None:
        # Called by hand rather than from SGLang's load_plugins() (which applies hooks after all plugins).
        HookRegistry.apply_hooks()
