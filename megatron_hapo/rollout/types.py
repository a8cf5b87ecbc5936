"""What a rollout engine takes and returns."""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from megatron_hapo.config.errors import HapoError
from megatron_hapo.rollout.inflight import RequestGate

if TYPE_CHECKING:
    import numpy as np

DEFAULT_TAU = 0.05
STATS_FIELDS = ("pivot", "sigma", "pos_scale", "neg_scale")  # AdaptiveTemperature.stats order (EntropyStats')


def _finite(name: str, value: Any) -> float:
    try:
        number = float(value)  # a 0-d tensor or a numpy scalar is fine
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor of several values
        number = math.nan
    if isinstance(value, bool | str) or not math.isfinite(number):
        raise ValueError(f"AdaptiveTemperature.{name} must be a finite number, got {value!r}")
    return number


@dataclass(frozen=True)
class AdaptiveTemperature:
    """HAPO's entropy-adaptive sampling temperature for one generate call (served by the HAPO sampler).

    Per generated token t: T_t = T_base · (1 + τ · ĥ(H_t)), with ĥ from the step's entropy ``stats``
    (``megatron_hapo.algorithms.temperature_from_entropy``). ``stats`` is (pivot, sigma, pos_scale,
    neg_scale), for example an ``EntropyStats``, or None: no statistics yet (step 1, evaluation), so every
    token samples at T_base. How it travels to the server: ``megatron_hapo.rollout.sampler_wire``.

    This is the one place τ's range is checked (the config, the client and the plugin all build one).
    """

    stats: tuple[float, float, float, float] | None = None
    tau: float = DEFAULT_TAU

    def __post_init__(self):
        tau = _finite("tau", self.tau)
        if not 0.0 <= tau < 1.0:
            # T = T_base (1 + tau h) with h in [-1, 1]: tau >= 1 could make T <= 0
            raise ValueError(
                f"AdaptiveTemperature.tau must be in [0, 1) so that T stays positive, got {tau!r}"
            )
        object.__setattr__(self, "tau", tau)
        if self.stats is None:
            return
        if not isinstance(self.stats, Iterable):
            raise ValueError(f"AdaptiveTemperature.stats must be 4 numbers or None, got {self.stats!r}")
        values = tuple(self.stats)  # EntropyStats iterates as (pivot, sigma, pos_scale, neg_scale)
        if len(values) != len(STATS_FIELDS):
            raise ValueError(f"AdaptiveTemperature.stats needs the 4 values {STATS_FIELDS}, got {values!r}")
        stats = tuple(_finite(f"stats.{name}", v) for name, v in zip(STATS_FIELDS, values, strict=True))
        if stats[1] <= 0.0:
            raise ValueError(f"AdaptiveTemperature.stats.sigma must be > 0, got {stats[1]!r}")
        object.__setattr__(self, "stats", stats)


@dataclass(frozen=True)
class GenerationParams:
    """Sampling parameters for one generate call (every prompt gets ``n`` samples)."""

    n: int = 1
    max_new_tokens: int = 256
    temperature: float = 1.0  # base temperature; the HAPO sampler scales it per token
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    # HAPO's per-token temperature (needs the HAPO sampler on the engine); None = the base temperature
    adaptive_temperature: AdaptiveTemperature | None = None
    # one seed per prompt of the call: sample j of prompt i is drawn with sampling_seed
    # sample_seed(seeds[i], j), so it depends on the seed and the logits only (needs the HAPO sampler)
    seeds: tuple[int, ...] | None = None
    # a mixture of experts: every sample carries the experts each of its tokens was routed to (routing replay;
    # the engine must be started with SGLang's enable_return_routed_experts)
    return_routed_experts: bool = False

    def __post_init__(self):
        if self.n < 1 or self.max_new_tokens < 1:
            raise ValueError(
                f"n and max_new_tokens must be >= 1 (got n={self.n}, max_new_tokens={self.max_new_tokens})"
            )
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(
                f"need temperature >= 0 and 0 < top_p <= 1 (got {self.temperature}, {self.top_p})"
            )
        if self.top_k == 0 or self.top_k < -1:  # SGLang refuses it, at the first request
            raise ValueError(f"top_k must be -1 (off) or at least 1, got {self.top_k}")

    def to_sglang(self) -> dict[str, Any]:
        """SGLang ``sampling_params`` for one request (``n`` is handled by the engine wrapper)."""
        params: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "ignore_eos": self.ignore_eos,
        }
        if self.stop:
            params["stop"] = list(self.stop)
        if self.stop_token_ids:
            params["stop_token_ids"] = list(self.stop_token_ids)
        if self.adaptive_temperature is not None:
            from megatron_hapo.rollout.sampler_wire import encode_request  # sampler_wire imports this module

            params["custom_params"] = encode_request(self.adaptive_temperature)
        return params

    def sglang_requests(self, prompts: list[list[int]]) -> tuple[list[list[int]], dict | list[dict]]:
        """``input_ids`` and ``sampling_params`` for one SGLang ``generate`` call giving ``n`` samples per
        prompt in prompt-major order: SGLang's ``n``, or with ``seeds`` n one-sample requests per prompt,
        each with its own ``sampling_seed`` (SGLang's ``n`` would give every copy the same seed)."""
        if self.seeds is None:
            return [list(p) for p in prompts], dict(self.to_sglang(), n=self.n)
        self._check_seeds(len(prompts))
        base = self.to_sglang()
        inputs = [list(p) for p in prompts for _ in range(self.n)]
        sampling = [dict(base, sampling_seed=sample_seed(s, j)) for s in self.seeds for j in range(self.n)]
        return inputs, sampling

    def per_prompt(self, count: int) -> list[GenerationParams]:
        """One parameter set per prompt of a ``count``-prompt call (each with its own seed, if seeded)."""
        if self.seeds is None:
            return [self] * count
        self._check_seeds(count)
        return [replace(self, seeds=(seed,)) for seed in self.seeds]

    def check_engine_sampler(self, hapo_sampler: bool, engine: str) -> None:
        """Refuse what only the HAPO sampler serves (``adaptive_temperature``, ``seeds``) on an engine started
        without it: stock SGLang would sample at the base temperature, and ignore ``sampling_seed`` outside its
        deterministic mode, without a word."""
        if hapo_sampler:
            return
        wanted = [name for name in ("adaptive_temperature", "seeds") if getattr(self, name) is not None]
        if wanted:
            raise EngineError(
                f"{engine}: GenerationParams.{' and '.join(wanted)} need the HAPO sampler, and this engine was "
                "started without it: start it with hapo_sampler=True (the trainer does when "
                "algorithm.adaptive_temperature.enable or rollout.seeded_sampling is set)"
            )

    def _check_seeds(self, count: int) -> None:
        if len(self.seeds) != count:
            raise ValueError(f"{len(self.seeds)} seeds for {count} prompts: give one seed per prompt")


def sample_seed(prompt_seed: int | str, index: int) -> int:
    """A well-mixed 63-bit ``sampling_seed`` for sample ``index`` of a prompt seeded ``prompt_seed``."""
    digest = hashlib.blake2b(f"{prompt_seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass
class RolloutSample:
    """One generated response; per-token lists are aligned with ``response_ids``."""

    prompt_index: int  # position of the prompt in the generate call
    sample_index: int  # 0..n-1 within its prompt
    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]  # behaviour log-prob of each token under the distribution actually sampled
    finish_reason: str  # "stop" | "length" | "abort"
    weight_version: str
    entropies: list[float] | None = None  # HAPO sampler: entropy of softmax(z) at T=1 per token
    temperatures: list[float] | None = None  # HAPO sampler: temperature used per token
    # GenerationParams.return_routed_experts: [prompt + response tokens - 1, MoE layers x top_k] expert ids of
    # every token the engine ran (all but the last response token), uint8 (or int16 past 256 experts)
    routed_experts: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class GroupStreamReport:
    """What :meth:`SGLangFleet.generate_groups` generated: groups handed to ``accept`` (``completed``),
    groups aborted mid-generation, finished too late to be used (``discarded``), the positions of the prompts
    never sent (``never_sent``: the caller may submit them again), and every response token the servers
    generated for the call (aborted partial responses included)."""

    completed: int = 0
    aborted: int = 0
    discarded: int = 0
    never_sent: list[int] = field(default_factory=list)
    generated_tokens: int = 0


@runtime_checkable
class RolloutEngine(Protocol):
    """What the trainer, the evaluator and the weight synchronizer (``sync/``) need from a rollout backend
    (in-process SGLang or a fleet). Every method a caller uses on an engine is declared here."""

    name: str
    weight_version: str  # the version the engine serves (set_weight_version)
    request_gate: RequestGate  # its requests in flight; a weight sync holds it (rollout/inflight.py)
    cancelled: threading.Event  # set by cancel() (a harness that reuses an engine across runs clears it)

    def generate(self, prompts: list[list[int]], params: GenerationParams) -> list[RolloutSample]:
        """``len(prompts) * params.n`` samples, grouped by prompt (prompt 0's n samples first). Safe to call
        from another thread than the one that syncs (the in-process engine runs one call at a time)."""

    def generate_groups(
        self,
        prompts: list[list[int]],
        params: GenerationParams,
        accept: Callable[[int, list[RolloutSample]], bool],
    ) -> GroupStreamReport:
        """Stream groups: ``accept(i, prompt i's n samples)`` as each group completes, until it returns True;
        then the requests still queued or running are dropped or aborted (over-sampled dynamic sampling,
        ``algorithm.dynamic_sampling.over_sample``). The fleet streams; the in-process engine refuses."""

    # -- requests in flight: a sync holds new ones at ``request_gate`` and pauses, waits for
    #    (``request_gate.wait_idle``) or aborts the running ones by its policy (sync/synchronizer.py)
    def abort_requests(self) -> None:
        """Abort the running requests (SGLang's abort); the engine resubmits them after the release."""

    def cancel(self) -> None:
        """Stop generating for good (a stop signal: ``trainer/shutdown.py``): abort every request in flight,
        resubmit none, and make the generate calls running now and every later one raise
        :class:`RolloutCancelled`. Callable from any thread; weight updates and shutdown still work."""

    def pause(self) -> None:
        """Stop scheduling; running requests are retracted to the queue (none is lost)."""

    def resume(self) -> None: ...

    def flush_cache(self) -> None: ...

    # -- weight update (called by the transports of sync/transports.py)
    def begin_weight_update(self) -> None: ...

    def end_weight_update(self) -> None: ...

    def update_weights_from_tensor(self, named_tensors: list[tuple[str, Any]]) -> None: ...

    def update_weights_from_disk(self, hf_dir: str) -> None: ...

    @property
    def num_engine_ranks(self) -> int:
        """Ranks that join a distributed weight-update group (TP x servers)."""

    def init_weights_update_group(
        self, master_address: str, master_port: int, rank_offset: int, world_size: int, group_name: str,
        backend: str,
    ) -> None: ...  # fmt: skip

    def update_weights_from_distributed(
        self, names: list[str], dtypes: list[str], shapes: list[list[int]], group_name: str
    ) -> None: ...

    def destroy_weights_update_group(self, group_name: str) -> None: ...

    def recover_from_sync_failure(self, exc: BaseException) -> bool:
        """After a failed broadcast: True when dead servers were dropped and the sync can go on."""

    def set_weight_version(self, version: str) -> None: ...

    def get_weight(self, hf_name: str, truncate_size: int = 10**9) -> Any:
        """A parameter read back from the engine (read-back verification, the log-prob doctor)."""

    def server_settings(self) -> list[dict[str, Any]]:
        """Each engine's or server's SGLang ``ServerArgs`` as it resolved them (SGLang's ``/server_info``)."""

    def health(self) -> bool: ...

    def shutdown(self) -> None: ...


class EngineError(HapoError, RuntimeError):
    """A rollout engine call failed; the message names the engine/server and the call."""


class RolloutCancelled(Exception):
    """A generate call ended by :meth:`RolloutEngine.cancel` (a stop): its responses are incomplete and
    dropped. Not an error, and not an :class:`EngineError` (those are retried)."""

    def __init__(self, engine: str):
        super().__init__(f"{engine}: generation cancelled by a stop")
