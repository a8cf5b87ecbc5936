r"""The HAPO sampler: SGLang's ``Sampler`` with an entropy-adaptive temperature per row and step.

For each row b of a decode (or first-token prefill) step, with z_b the post-processed logits (after
penalties, grammar masks, ``logit_bias``, NaN clean-up) and T_b the request's temperature:

.. math::

    H_b = -\sum_v p_{b,v} \log p_{b,v},\quad p_b = \mathrm{softmax}(z_b)
        \qquad \text{(fp32, } T = 1\text{; ``token_entropy``)}

    T^{\mathrm{eff}}_b = \mathrm{temperature\_from\_entropy}(H_b, T_b, \mathrm{stats}_b, \tau_b)
        \qquad \text{(rows with HAPO enabled, statistics present, not greedy)}

    T^{\mathrm{eff}}_b = T_b \qquad \text{(every other row)}

SGLang's own pipeline then runs unchanged, with T^eff in place of the request temperatures for this one
call: ``sampling_info.temperatures`` is rebound to T^eff [B, 1] after pre-processing and restored when
``forward`` returns (also on error). SGLang divides the logits by it, so it samples from
softmax(z_b / T^eff_b) with top-k / top-p / min-p and seeding as usual, and the log-prob it returns is
log_softmax(z_b / T^eff_b)[token]: the log-prob under the distribution actually sampled (before
truncation, like stock SGLang). This is equivalent to scaling the logits by T_b / T^eff_b before SGLang's
division, minus one read-write pass over [B, V] and one rounding. The schedule is
``megatron_hapo.algorithms`` (the function the trainer uses), never a copy.

Per token, ``logits_output.customized_info`` gets ``hapo_temperature`` (T^eff_b) and ``hapo_entropy``
(H_b), for every row (also rows without HAPO: T_b and their entropy), as device tensors [B]: the sampler
never syncs. The scheduler's result processing copies them to the host and makes them Python floats
where SGLang does the same for its log-probs (``sglang_ext.outputs``), then appends row b to request b's
``meta_info`` lists, aligned one to one with ``output_token_logprobs``.

Requests with a ``sampling_seed`` are sampled by SGLang's seeded kernels (Gumbel-max on a hash of the seed,
the token position and the vocabulary index) without its deterministic-inference mode: their tokens depend
only on the seed and the logits, not on the batch they share or on earlier requests. The trainer uses
this to make rollouts reproducible across a resume (``rollout.seeded_sampling``).

Rows with HAPO disabled are sampled bit for bit as stock SGLang samples them: their T^eff_b is T_b itself
(same fp32 value), the logits are never written (the entropy pass only reads them), and a batch without
any adaptive row keeps its temperatures tensor.
"""

from __future__ import annotations

import torch
from sglang.srt.layers.sampler import Sampler
from sglang.srt.runtime_context import get_exec

from megatron_hapo.algorithms import fused_sampler_temperatures, fused_token_entropy
from sglang_ext.batch_state import rows_of
from sglang_ext.params import ENTROPY_KEY, TEMPERATURE_KEY

# Built-in sampling kernels the HAPO sampler delegates to (it only chooses the temperatures).
INNER_BACKENDS = ("pytorch", "flashinfer")


class HapoSampler(Sampler):
    """``Sampler`` subclass; ``inner_backend`` names the built-in kernels used for top-k/top-p/min-p."""

    def __init__(self, inner_backend: str):
        if inner_backend not in INNER_BACKENDS:
            raise ValueError(
                f"HAPO sampler: inner backend must be one of {INNER_BACKENDS}, got {inner_backend!r}"
            )
        super().__init__()
        self.inner_backend = inner_backend
        self._armed = False  # True between forward() entry and the first _preprocess_logits call
        self._step_info: dict[str, torch.Tensor] | None = None
        self._rebound = None  # (sampling_info, its own temperatures) while forward() runs with T_eff

    def forward(
        self,
        logits_output,
        sampling_info,
        return_logprob,
        top_logprobs_nums,
        token_ids_logprobs,
        positions,
        *,
        logprob_logits=None,
    ):
        if logprob_logits is not None:
            # Watermarking hands a second, pre-watermark logits tensor; its log-probs would ignore T_eff.
            raise RuntimeError("HAPO sampler: watermarking is not supported (start the server without it)")
        if logits_output.next_token_logits.shape[0] != len(sampling_info):
            raise RuntimeError(
                f"HAPO sampler: {logits_output.next_token_logits.shape[0]} logit rows for {len(sampling_info)} "
                "requests (speculative decoding samples outside Sampler and is not supported)"
            )
        self._armed, self._step_info = True, None
        rows = rows_of(sampling_info)
        # Seeded rows: SGLang fills sampling_info.sampling_seed only in deterministic-inference mode (which
        # also forces its own sampler); the HAPO sampler hands the requests' seeds to the same seeded
        # kernels (Gumbel-max keyed by seed and position) for this call.
        bind_seeds = rows is not None and rows.seed is not None and sampling_info.sampling_seed is None
        if bind_seeds:
            sampling_info.sampling_seed = rows.seed
        try:
            next_ids = super().forward(
                logits_output, sampling_info, return_logprob, top_logprobs_nums, token_ids_logprobs, positions
            )
        finally:
            if bind_seeds:
                sampling_info.sampling_seed = None
            self._armed = False
            if self._rebound is not None:
                info, own_temperatures = self._rebound
                info.temperatures = own_temperatures  # the batch keeps its requests' temperatures
                self._rebound = None
        if self._step_info is not None:
            info = logits_output.customized_info or {}
            info.update(self._step_info)
            logits_output.customized_info = info
            self._step_info = None
        return next_ids

    def _preprocess_logits(self, logits: torch.Tensor, sampling_info) -> torch.Tensor:
        logits = super()._preprocess_logits(logits, sampling_info)  # custom processors, NaN clean-up
        # Only the sampling pass of forward() is adaptive: compute_logprobs_only (prefill scoring) also
        # calls this method and must keep SGLang's semantics.
        if self._armed:
            self._armed = False
            self._step_info = self._apply_adaptive_temperature(logits, sampling_info)
        return logits

    def _apply_adaptive_temperature(self, logits: torch.Tensor, sampling_info) -> dict[str, torch.Tensor]:
        """Hand T_eff to SGLang for this call; return the per-row outputs for ``customized_info``: device
        tensors [B], turned into lists by the scheduler's result processing (``sglang_ext.outputs``)."""
        base = sampling_info.temperatures.view(-1)  # [B] fp32; greedy rows carry 1.0
        rows = rows_of(sampling_info)
        if rows is not None and rows.any_adaptive and not sampling_info.is_all_greedy:
            # Per-row statistics: the schedule unpacks ``stats`` as (pivot, sigma, pos_scale, neg_scale) and
            # broadcasts, so four [B] tensors give each row its own request's statistics.
            stats = tuple(rows.stats.unbind(dim=1))
            adaptive = rows.adaptive & (sampling_info.top_ks > 1)  # greedy rows keep T_b (argmax anyway)
            # entropy at T = 1 (reported for every row) and the schedule, one compiled graph
            temperature, entropy = fused_sampler_temperatures(logits, base, stats, rows.tau, adaptive)
            # SGLang divides the logits by sampling_info.temperatures right after pre-processing.
            self._rebound = (sampling_info, sampling_info.temperatures)
            sampling_info.temperatures = temperature.view(-1, 1)
        else:
            entropy = fused_token_entropy(logits)  # [B] fp32, at T = 1; reported for every row
            temperature = base.clone()  # read after this step, when the batch may have moved on
        return {TEMPERATURE_KEY: temperature, ENTROPY_KEY: entropy}  # no .tolist(): no device sync here

    def _sample_from_probs(self, *args, **kwargs):
        # The base method dispatches on the configured backend *name*; under "hapo" it would reject it.
        kernel = get_exec().kernel
        sampling_info = kwargs["sampling_info"] if "sampling_info" in kwargs else args[1]
        # flashinfer's kernels take no seeds; the torch kernels implement SGLang's seeded sampling
        backend = "pytorch" if sampling_info.sampling_seed is not None else self.inner_backend
        if kernel.sampling_backend == backend:
            return super()._sample_from_probs(*args, **kwargs)
        with kernel.override(sampling_backend=backend):
            return super()._sample_from_probs(*args, **kwargs)
