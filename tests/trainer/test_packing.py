"""Sequence packing (issue 19 item 4): the packer, packed micro-batches (mask and THD routes), per-sequence
loss aggregation of packed rows, the route chosen per layer spec, and a packed forward through Megatron's
GPTModel equal to each sequence's own forward (attention leaking across sequences must not be).
The same step under packing, token budgets and fixed micro-batches at TP=2, PP=2, DP=2 is in
tests/dist_jobs/job_batching_equivalence.py (tests/trainer/test_batching.py runs it)."""

from __future__ import annotations

import logging
import random
from types import SimpleNamespace

import pytest
import torch

from megatron_hapo.trainer.batching import pack_rows, plan_step, round_up
from megatron_hapo.trainer.experience import Experience
from tests.trainer.batching_data import VOCAB, varied_batch


def _experience(batch=None) -> Experience:
    batch = batch or varied_batch()
    n = len(batch.samples)
    return Experience.build(
        batch.samples,
        [s.temperatures for s in batch.samples],
        [float(i % 3 - 1) for i in range(n)],
        batch.group_ids,
        list(range(n)),
    )


# ------------------------------------------------------------------------------------------- the packer
def test_packed_plan_fills_rows_within_budget_and_keeps_ranks_equal():
    rng = random.Random(1)
    for dp, num_mini, budget, mult in [(1, 1, 512, 1), (2, 2, 700, 2), (4, 3, 1024, 4)]:
        seq_lens = [min(500, 8 + int(rng.lognormvariate(3.5, 1.0))) for _ in range(dp * num_mini * 16)]
        plan = plan_step(seq_lens, dp, num_mini, max_tokens=budget, max_tokens_old=2 * budget,
                         pad_multiple=mult, packed=True)  # fmt: skip
        seen = sorted(i for rank in plan.update for mini in rank for mb in mini for i in mb.rows)
        assert seen == list(range(len(seq_lens)))
        assert sorted(i for rank in plan.old for mb in rank for i in mb.rows) == seen
        assert len({tuple(len(m) for m in rank) for rank in plan.update}) == 1  # same count on every rank
        for rank in plan.update:
            for mini in rank:
                for mb in mini:
                    if mb.rows:
                        assert mb.packed and mb.batch_rows == 1
                        assert mb.seq_len == round_up(sum(seq_lens[i] for i in mb.rows), mult) <= budget
        assert all(mb.seq_len <= 2 * budget for rank in plan.old for mb in rank)
        st = plan.stats()
        budgeted = plan_step(seq_lens, dp, num_mini, max_tokens=budget, max_tokens_old=2 * budget,
                             pad_multiple=mult).stats()  # fmt: skip
        assert st["perf/padding_ratio/update"] <= 1.10, st
        assert st["perf/padding_ratio/update"] < budgeted["perf/padding_ratio/update"]
        assert (
            st["perf/dp_tokens/max_over_mean"] == budgeted["perf/dp_tokens/max_over_mean"]
        )  # same LPT split


def test_packed_padding_ratio_counts_one_row_per_micro_batch():
    # FFD: 9 -> row A, 7 -> row B (9 + 7 > 12), 4 -> B? 7 + 4 = 11 -> round_up(11, 2) = 12 fits; 3 -> A (12)
    assert pack_rows([0, 1, 2, 3], [9, 7, 4, 3], budget=12, pad_multiple=2) == [[0, 3], [1, 2]]
    plan = plan_step([9, 7, 4, 3], dp=1, num_mini=1, max_tokens=12, pad_multiple=2, packed=True)
    assert [(mb.rows, mb.seq_len) for mb in plan.update[0][0]] == [((0, 3), 12), ((1, 2), 12)]
    assert plan.stats()["perf/padding_ratio/update"] == 24 / 23  # 2 rows x 12 slots / 23 real tokens
    # an empty (equalising) micro-batch is one row of pad_multiple slots, counted as such
    # (LPT: rank 0 gets 9 + 9, two rows; rank 1 gets 9 + 1, one row of 10, plus an empty one)
    plan = plan_step([9, 9, 9, 1], dp=2, num_mini=1, max_tokens=10, pad_multiple=2, packed=True)
    assert [[mb.rows for mb in rank[0]] for rank in plan.update] == [[(0,), (2,)], [(1, 3), ()]]
    assert plan.stats()["perf/padding_ratio/update"] == (10 + 10 + 10 + 2) / 28


def test_packing_needs_a_budget_and_refuses_a_sequence_over_it():
    with pytest.raises(ValueError, match="packing needs a token budget"):
        plan_step([3, 4], dp=1, num_mini=1, max_tokens=None, packed=True)
    with pytest.raises(ValueError, match="exceeds the packed-row token budget 8"):
        plan_step([3, 9], dp=1, num_mini=1, max_tokens=8, packed=True)


# ----------------------------------------------------------------------------------- packed micro-batches
def test_packed_micro_batch_mask_route():
    exp = _experience()
    rows = (2, 0, 5)
    lens = [int(exp.seq_lens[i]) for i in rows]
    total = sum(lens)
    seq_len = total + 3
    mb = exp.packed_micro_batch(rows, seq_len, "mask")
    assert mb.packing == "mask" and mb.tokens.shape == (1, seq_len)
    starts = [0, lens[0], lens[0] + lens[1]]
    for r, a, n in zip(rows, starts, lens):
        o = int(exp.offsets[r])
        assert torch.equal(mb.tokens[0, a : a + n], exp.tokens[o : o + n])
        assert torch.equal(mb.mask[0, a : a + n], exp.mask[o : o + n])
        assert torch.equal(mb.position_ids[0, a : a + n], torch.arange(n))  # positions restart
        assert torch.equal(mb.segments[rows.index(r), :n], torch.arange(a, a + n))
        assert (mb.segments[rows.index(r), n:] == -1).all()
    assert torch.equal(mb.index[0, total:], torch.full((3,), exp.pad_slot))  # trailing padding
    assert torch.equal(mb.position_ids[0, total:], torch.arange(3))
    m = mb.attention_mask[0, 0]  # True = masked
    seg = torch.repeat_interleave(torch.arange(4), torch.tensor(lens + [3]))
    for q in range(seq_len):
        for k in range(seq_len):
            assert bool(m[q, k]) == (k > q or bool(seg[q] != seg[k])), (q, k)


def test_packed_micro_batch_thd_route_builds_packed_seq_params():
    exp = _experience()
    rows = (1, 3, 4)
    lens = [int(exp.seq_lens[i]) for i in rows]
    mb = exp.packed_micro_batch(rows, sum(lens) + 2, "thd")
    p = mb.packed_seq_params
    assert mb.packing == "thd" and mb.attention_mask is None
    assert p.qkv_format == "thd" and p.cu_seqlens_q.dtype == torch.int32
    want = torch.tensor([0, lens[0], lens[0] + lens[1], sum(lens), sum(lens) + 2], dtype=torch.int32)
    assert torch.equal(p.cu_seqlens_q, want) and p.cu_seqlens_kv is p.cu_seqlens_q
    assert p.max_seqlen_q == p.max_seqlen_kv == max(lens)
    exact = exp.packed_micro_batch(rows, sum(lens), "thd").packed_seq_params  # no padding: no extra segment
    assert torch.equal(exact.cu_seqlens_q, want[:-1])


# -------------------------------------------------------------------------------------- the loss of a row
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_packed_loss_equals_the_loss_of_separate_rows(agg):
    """The same tokens, as right-padded rows or as one packed row with ``segments``: same loss and the same
    gradient. seq-mean-token-mean without ``segments`` (one row taken for one sequence) differs; the
    other modes are sums over tokens divided by the global normaliser, which rows do not change."""
    import dataclasses

    from megatron_hapo.algorithms import HapoLossConfig
    from megatron_hapo.ops import fused_hapo_loss

    exp = _experience()
    rows = (0, 3, 6, 7)
    cfg = dataclasses.replace(HapoLossConfig(), agg=agg, adaptive_clip=False, adaptive_advantage=False)
    lens = [int(exp.seq_lens[i]) for i in rows]
    logits_flat = torch.randn(sum(lens), VOCAB, generator=torch.Generator().manual_seed(0))

    def loss_of(mb, logits, segments):
        leaf = logits.clone().requires_grad_()
        loss, _ = fused_hapo_loss(leaf, mb.targets, mb.old_log_prob - 0.1, mb.advantages, mb.mask, cfg,
                                  temperature=mb.temperature, segments=segments, global_normalizer=7.0)  # fmt: skip
        loss.backward()
        return loss.detach(), leaf.grad

    packed = exp.packed_micro_batch(rows, sum(lens), "mask")
    got, got_grad = loss_of(packed, logits_flat[None], packed.segments)
    padded = exp.micro_batch(rows, max(lens))
    lp = torch.zeros(len(rows), max(lens), VOCAB)
    starts = [sum(lens[:j]) for j in range(len(rows))]
    for j, (a, n) in enumerate(zip(starts, lens)):
        lp[j, :n] = logits_flat[a : a + n]
    want, want_grad = loss_of(padded, lp, None)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    for j, (a, n) in enumerate(zip(starts, lens)):
        torch.testing.assert_close(got_grad[0, a : a + n], want_grad[j, :n], rtol=1e-5, atol=1e-8)
    unsegmented, _ = loss_of(packed, logits_flat[None], None)
    assert torch.allclose(unsegmented, want) == (agg != "seq-mean-token-mean")


# ---------------------------------------------------------------------------------- the route per spec
def test_route_per_layer_spec_and_refusals(caplog):
    from megatron_hapo.config import load_config
    from megatron_hapo.models.packing import resolve_packing
    from megatron_hapo.trainer.policy import packing_route

    with caplog.at_level(logging.INFO, logger="megatron_hapo.trainer.policy"):
        assert packing_route(load_config("examples/configs/tiny_cpu.yaml", check_env=False)) == "mask"
    assert "sequence packing: mask (layer spec local" in caplog.text  # the choice is logged

    assert resolve_packing("auto", te_spec=False, token_budget=True)[0] == "mask"
    assert resolve_packing("auto", te_spec=True, token_budget=True)[0] == "none"
    assert resolve_packing("auto", te_spec=False, token_budget=False)[0] == "none"
    assert resolve_packing("thd", te_spec=True, token_budget=True)[0] == "thd"
    assert resolve_packing("none", te_spec=False, token_budget=True)[0] == "none"
    with pytest.raises(ValueError, match="ignores an explicit mask"):
        resolve_packing("mask", te_spec=True, token_budget=True)
    with pytest.raises(ValueError, match="refuses PackedSeqParams"):
        resolve_packing("thd", te_spec=False, token_budget=True)
    with pytest.raises(ValueError, match="needs data.max_tokens_per_micro_batch"):
        resolve_packing("mask", te_spec=False, token_budget=False)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["data.sequence_packing=mask", "model.layer_spec=te"], "ignores an explicit mask"),
        (["data.sequence_packing=thd", "model.layer_spec=local"], "refuses PackedSeqParams"),
        (["data.sequence_packing=mask", "data.max_tokens_per_micro_batch=null"], "set that budget"),
        (["data.sequence_packing=yes"], "data.sequence_packing"),
    ],  # fmt: skip
)
def test_packing_modes_the_attention_cannot_do_are_refused_at_config_time(overrides, match):
    from megatron_hapo.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=match):
        load_config("examples/configs/tiny_cpu.yaml", overrides, check_env=False, world_size=4)


def test_mask_packing_with_an_auto_spec_that_resolves_to_te_is_refused_with_the_environment():
    from megatron_hapo.config import ConfigError, load_config
    from megatron_hapo.config.environment import EnvProbe

    cfg = ["data.sequence_packing=mask", "model.layer_spec=auto"]
    with pytest.raises(ConfigError, match="layer_spec=auto picks Transformer Engine"):
        load_config(
            "examples/configs/tiny_cpu.yaml", cfg, check_env=True, probe=EnvProbe(te_error=lambda: None)
        )
    no_te = EnvProbe(te_error=lambda: "no TE here")
    with pytest.raises(ConfigError, match="does not import here"):
        thd = ["data.sequence_packing=thd", "model.layer_spec=auto"]
        load_config("examples/configs/tiny_cpu.yaml", thd, check_env=True, probe=no_te)


# ------------------------------------------------------------------------- through Megatron's GPTModel
def test_packed_forward_equals_each_sequence_alone(peaked_model, caplog):
    """Local spec, fp32: the packed row's logits equal each sequence's own forward (RoPE restarting, no
    attention across sequences); a plain causal mask over the row (attention leaking) does not; inside
    ``per_token_rotary`` the rotary table is the per-sequence one; the THD route reaches Megatron's
    attention with its PackedSeqParams (which the local attention refuses) and its RoPE equals the mask
    route's per-token table."""
    from megatron.core import parallel_state as ps
    from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb

    from megatron_hapo.checkpoint_io import load_hf_weights
    from megatron_hapo.models import build_gpt_model
    from megatron_hapo.models.packing import forward_micro_batch, per_token_rotary
    from tests.parallel_utils import world_of_one

    exp = _experience()
    rows = (0, 2, 6, 9)  # 44, 9, 37, 16 tokens
    lens = [int(exp.seq_lens[i]) for i in rows]
    with world_of_one():
        model = build_gpt_model(peaked_model, params_dtype=torch.float32, spec="local")
        load_hf_weights(model, peaked_model)
        model.eval()
        with torch.no_grad():
            alone = []
            for r, n in zip(rows, lens):
                mb = exp.micro_batch((r,), n)
                alone.append(forward_micro_batch(model, mb)[0])
            want = torch.cat(alone)
            packed = exp.packed_micro_batch(rows, sum(lens) + 2, "mask")
            got = forward_micro_batch(model, packed)[0, : sum(lens)]
            leak = SimpleNamespace(
                **{**vars(packed), "attention_mask": exp.micro_batch((0,), sum(lens) + 2).attention_mask}
            )
            leaked = forward_micro_batch(model, leak)[0, : sum(lens)]
        scale = float(want.abs().max())
        assert float((got - want).abs().max()) / scale < 1e-5
        assert float((leaked - want).abs().max()) / scale > 1e-2

        rope = model.rotary_pos_emb
        s = packed.tokens.shape[1]
        with per_token_rotary(model, packed.position_ids):
            table = rope(s)
        row_table = rope(s)  # outside the context: positions 0 .. s-1 across the row
        per_seq = torch.cat([rope(n) for n in lens + [2]])
        assert torch.equal(table, per_seq) and not torch.equal(row_table, per_seq)
        seen = []  # what the model's own forward of the packed row used
        hook = rope.register_forward_hook(lambda mod, args, out: seen.append(out))
        with torch.no_grad():
            forward_micro_batch(model, packed)
        hook.remove()
        assert len(seen) == 1 and torch.equal(seen[0], per_seq)

        thd = exp.packed_micro_batch(rows, sum(lens) + 2, "thd")
        with pytest.raises(AssertionError, match="Packed sequence is not supported by DotProductAttention"):
            forward_micro_batch(model, thd)
        p = thd.packed_seq_params
        assert rope.get_rotary_seq_len(None, model.decoder, None, model.config, p) == max(lens)
        q = torch.randn(s, 1, 2, table.shape[-1], generator=torch.Generator().manual_seed(3))
        via_thd = apply_rotary_pos_emb(q[:, 0], rope(max(lens), packed_seq=True), model.config,
                                       cu_seqlens=p.cu_seqlens_q, cp_group=ps.get_context_parallel_group())  # fmt: skip
        via_mask = apply_rotary_pos_emb(q, table, model.config)[:, 0]
        torch.testing.assert_close(via_thd, via_mask, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("route,attention", [("mask", "sdpa"), ("mask", "unfused"), ("thd", "auto")])
def test_packed_forward_on_cuda_equals_each_sequence_alone(peaked_model, route, attention):
    """On a GPU (benchmarks/gpu/run_all.sh): the packed row's logits equal each sequence's own forward, for
    the mask route (local spec with either core attention, fused softmax off as the policy builds it) and
    the THD route (Transformer Engine's spec and attention with PackedSeqParams; skipped, naming why, where
    TE does not import)."""
    from megatron_hapo.checkpoint_io import load_hf_weights
    from megatron_hapo.models import build_gpt_model
    from megatron_hapo.models.builder import uses_te_spec
    from megatron_hapo.models.packing import forward_micro_batch
    from tests.parallel_utils import world_of_one

    if route == "thd":
        try:
            te = uses_te_spec("auto")
        except Exception as err:  # noqa: BLE001 - the reason is the skip message
            te, why = False, str(err)
        else:
            why = "Transformer Engine does not import here"
        if not te:
            pytest.skip(f"THD packing needs Transformer Engine: {why}")
    exp = _experience().to("cuda")
    rows = (0, 2, 6, 9)
    lens = [int(exp.seq_lens[i]) for i in rows]
    with world_of_one(device_mode=False):
        model = build_gpt_model(peaked_model, params_dtype=torch.float32, spec="te" if route == "thd" else "local",
                                local_attention=attention, config_overrides={"masked_softmax_fusion": False})  # fmt: skip
        load_hf_weights(model, peaked_model)
        model.cuda().eval()
        with torch.no_grad():
            want = torch.cat(
                [forward_micro_batch(model, exp.micro_batch((r,), n))[0] for r, n in zip(rows, lens)]
            )
            packed = exp.packed_micro_batch(rows, sum(lens) + 2, route)
            got = forward_micro_batch(model, packed)[0, : sum(lens)]
    print(
        f"{route} ({attention}): max |packed - alone| / max |logit| = {float((got - want).abs().max() / want.abs().max()):.2e}"
    )
    assert (
        float((got - want).abs().max()) / float(want.abs().max()) < 1e-4
    )  # TF32/cuDNN kernels differ by shape
