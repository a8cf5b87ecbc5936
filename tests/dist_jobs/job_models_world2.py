"""HF <-> Megatron conversion at world size 2 (run by tests/models/test_conversion_dist.py).

usage: torchrun --nproc-per-node 2 job_models_world2.py SHARED_DIR FAMILY...

SHARED_DIR/FAMILY holds a tiny HF model of each family (tests/demo/tiny_models.py). For every family:
``hf-to-mcore --tp 2`` run by both ranks (each converts its TP shard); that checkpoint loaded at TP=2
and at PP=2 (resharding) matches the HF logits (< 1e-4) and exports bit-exactly the HF tensors on
every rank; so does a model loaded straight from HF (``load_hf_weights``) at TP=2 and PP=2; a freshly initialised model does not match (the check can fail); reloaded at TP=1
(DP=2) it gives the TP=2 logits; the CLI's ``verify`` passes at TP=2 and PP=2. For the last family
also ``hf-to-mcore --pp 2`` (PP-parallel import) and ``mcore-to-hf --pp 2`` (PP-walking export,
rank 0 writes), which must reproduce the HF files bit-exactly. Finally a config mismatch that only
one pipeline stage can see makes both ranks exit with code 2.
"""

import contextlib
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import megatron_hapo.parallel as hp
from megatron_hapo.checkpoint_io import (
    checkpoint_padded_vocab,
    export_hf_weights,
    load_checkpoint,
    load_hf_weights,
)
from megatron_hapo.checkpoint_io.verify import compare_with_hf, megatron_logits, random_tokens
from megatron_hapo.cli.convert import main as convert_main
from megatron_hapo.models import build_gpt_model

ATOL = 1e-4


def log(msg):
    if dist.get_rank() == 0:
        print(f"[job] {msg}", flush=True)


@contextlib.contextmanager
def layout(tp, pp, seed=1234, ep=1):
    hp.initialize_model_parallel(tp, pp, seed=seed, expert_model_parallel_size=ep)
    try:
        with hp.device_mode():
            yield
    finally:
        hp.destroy_model_parallel()


def hf_tensors(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def check_export(model, reference: dict[str, torch.Tensor], what: str) -> None:
    """Every rank must yield exactly the HF tensors (names, shapes, values), each once."""
    seen = {}
    for name, tensor in export_hf_weights(model):
        assert name not in seen, f"{what}: {name} exported twice"
        seen[name] = tensor.cpu()
    assert set(seen) == set(reference), f"{what}: export names differ: {set(seen) ^ set(reference)}"
    for name, ref in reference.items():
        assert torch.equal(seen[name], ref), f"{what}: exported {name} differs from the HF tensor"


def cli(*argv) -> None:
    rc = convert_main([str(a) for a in argv])
    assert rc == 0, f"hapo-convert {' '.join(map(str, argv))} exited {rc}"


def check_family(shared: Path, family: str) -> None:
    hf = shared / family
    reference = hf_tensors(hf)
    ckpt = shared / f"{family}-tp2"
    cli("hf-to-mcore", "--hf", hf, "--out", ckpt, "--tp", 2)
    padded = checkpoint_padded_vocab(ckpt)
    assert padded == 512, f"vocab 300 at TP=2 must pad to 512 (128 x 2), got {padded}"
    tokens = random_tokens(300, seed=7)

    tp2_logits = None
    for tp, pp in [(2, 1), (1, 2)]:
        with layout(tp, pp, seed=4321):  # another seed: the weights must come from the checkpoint
            model = build_gpt_model(hf, padded_vocab_size=padded)
            fresh = compare_with_hf(model, hf)
            assert fresh.max_abs_diff > 1e-2, (
                f"{family}: a random model already matches HF ({fresh.describe()})"
            )
            load_checkpoint(model, ckpt)
            result = compare_with_hf(model, hf)
            assert result.ok, f"{family} TP={tp} PP={pp}: {result.describe()}"
            log(f"{family} TP={tp} PP={pp} (checkpoint written at TP=2): {result.describe()}")
            check_export(model, reference, f"{family} TP={tp} PP={pp}")
            if tp == 2:
                tp2_logits = megatron_logits(model, tokens)
            # straight from HF, no checkpoint (the trainer's path; at PP=2 a tied output layer on
            # the last stage is read from the HF embedding)
            direct = build_gpt_model(hf)
            load_hf_weights(direct, hf)
            result = compare_with_hf(direct, hf)
            assert result.ok, f"{family} TP={tp} PP={pp} loaded from HF: {result.describe()}"
            log(f"{family} TP={tp} PP={pp} (loaded from HF directly): {result.describe()}")

    with layout(1, 1):  # DP=2: each rank loads the whole TP=2 checkpoint
        model = build_gpt_model(hf, padded_vocab_size=padded)
        load_checkpoint(model, ckpt)
        diff = (megatron_logits(model, tokens) - tp2_logits).abs().max().item()
        # only the fp32 summation order differs (TP=2 splits the row-parallel matmuls): ~1e-5 on O(10) logits
        assert diff < ATOL, f"{family}: TP=2 checkpoint at TP=1 changes the logits by {diff}"
        log(f"{family} TP=2 checkpoint reloaded at TP=1: max |logit diff| vs TP=2 = {diff:.2e}")

    if family == "qwen3_moe":  # expert parallelism (DP=2, EP=2): each rank holds 4 of the 8 experts
        with layout(1, 1, ep=2):
            direct = build_gpt_model(hf)
            load_hf_weights(direct, hf)  # each rank reads its own experts
            result = compare_with_hf(direct, hf)  # rank 0's tokens also visit rank 1's experts (all-to-all)
            assert result.ok, f"{family} EP=2 loaded from HF: {result.describe()}"
            check_export(direct, reference, f"{family} EP=2")  # every expert, gathered over the EP group
            model = build_gpt_model(hf, padded_vocab_size=padded)
            load_checkpoint(model, ckpt)  # the TP=2 checkpoint, resharded to EP=2
            resharded = compare_with_hf(model, hf)
            assert resharded.ok, f"{family} EP=2 from the TP=2 checkpoint: {resharded.describe()}"
        log(
            f"{family} EP=2: {result.describe()}; from the TP=2 checkpoint {resharded.max_abs_diff:.2e}; export bit-exact"
        )

    cli("verify", "--hf", hf, "--mcore", ckpt, "--tp", 2)
    cli("verify", "--hf", hf, "--mcore", ckpt, "--pp", 2)
    log(f"{family}: export bit-exact at TP=2 and PP=2 on every rank; CLI verify passes at TP=2 and PP=2")


def check_pipeline_conversion(shared: Path, family: str) -> None:
    hf = shared / family
    ckpt, back = shared / f"{family}-pp2", shared / f"{family}-back"
    cli("hf-to-mcore", "--hf", hf, "--out", ckpt, "--pp", 2)
    cli("verify", "--hf", hf, "--mcore", ckpt, "--tp", 2)
    cli("mcore-to-hf", "--mcore", ckpt, "--hf-config", hf, "--out", back, "--pp", 2)
    if dist.get_rank() == 0:
        reference, written = hf_tensors(hf), hf_tensors(back)
        assert set(written) == set(reference), set(written) ^ set(reference)
        assert all(torch.equal(written[n], reference[n]) for n in reference), (
            "PP=2 round trip is not bit-exact"
        )
    log(
        f"{family}: hf-to-mcore --pp 2 verifies at TP=2; mcore-to-hf --pp 2 reproduces the HF tensors bit-exactly"
    )


def check_mismatch_fails_on_every_rank(shared: Path) -> None:
    """An untied config against a tied checkpoint at PP=2: only the last stage has an output layer to
    miss, yet both ranks must exit with the error (not leave stage 0 waiting in the load)."""
    rc = convert_main(
        ["verify", "--hf", str(shared / "llama"), "--mcore", str(shared / "qwen2-tp2"), "--pp", "2"]
    )
    assert rc == 2, f"rank {dist.get_rank()}: expected exit code 2 for a config mismatch, got {rc}"
    log("config mismatch seen by one PP stage only: both ranks exit with code 2")


def main():
    shared, families = Path(sys.argv[1]), sys.argv[2:]
    hp.init_distributed()
    assert dist.get_world_size() == 2, "run with --nproc-per-node 2"
    for family in families:
        check_family(shared, family)
    check_pipeline_conversion(shared, families[-1])
    check_mismatch_fails_on_every_rank(shared)
    log("OK")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
