"""Expert parallelism combined with TP and with PP, at world size 4 (run by tests/models/test_conversion_dist.py).

usage: torchrun --nproc-per-node 4 job_expert_layouts.py MODEL_DIR

MODEL_DIR holds a tiny Qwen3-MoE (tests/models/tiny.py: 8 experts, 2 per token). At TP=2 x EP=2 (sequence parallel:
each expert's MLP split over the TP pair, the experts over the two pairs) and at PP=2 x EP=2 (each stage's layers'
experts over its two ranks), a model loaded from HF gives HF's logits (< 1e-4) and every rank's export yields the HF
tensors bit-exactly, each once: the export's expert all-gather and its pipeline broadcast together. First, the CPU
shims of the uneven gather and reduce-scatter the dispatcher runs over the TP group under TP x EP (gloo has neither)
against their definitions.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

import megatron_hapo.parallel as hp
from megatron_hapo.checkpoint_io import load_hf_weights
from megatron_hapo.checkpoint_io.verify import compare_with_hf
from megatron_hapo.models import build_gpt_model
from tests.dist_jobs.job_models_world2 import check_export, hf_tensors, layout, log


def check_uneven_collectives() -> None:
    """Rank r holds r + 1 rows of value r + 1: the gather is every rank's rows in rank order; reduce-scattering a
    whole [10, 2] input of value r + 1 leaves rank r its r + 1 rows of 1 + 2 + 3 + 4 = 10."""
    from megatron.core.tensor_parallel import mappings

    rank, sizes, group = dist.get_rank(), [1, 2, 3, 4], dist.group.WORLD
    with hp.device_mode():
        mine = torch.full((rank + 1, 2), float(rank + 1))
        gathered = mappings._gather_along_first_dim(mine, group, sizes)
        assert torch.equal(gathered, torch.cat([torch.full((n, 2), float(n)) for n in sizes])), gathered
        scattered = mappings._reduce_scatter_along_first_dim(
            torch.full((10, 2), float(rank + 1)), group, sizes
        )
        assert torch.equal(scattered, torch.full((rank + 1, 2), 10.0)), scattered
    log("uneven gather and reduce-scatter over 4 ranks (the CPU shims) match their definitions")


def main():
    hf = Path(sys.argv[1])
    hp.init_distributed()
    assert dist.get_world_size() == 4, "run with --nproc-per-node 4"
    hp.initialize_model_parallel(1, 1)  # applies the CPU shims
    hp.destroy_model_parallel()
    check_uneven_collectives()
    reference = hf_tensors(hf)
    for tp, pp, overrides in [(2, 1, {"sequence_parallel": True}), (1, 2, {})]:
        with layout(tp, pp, ep=2):
            model = build_gpt_model(hf, config_overrides=overrides)
            load_hf_weights(model, hf)
            result = compare_with_hf(model, hf)
            where = f"TP={tp} PP={pp} EP=2"
            assert result.ok, f"{where}: {result.describe()}"
            check_export(model, reference, where)
        log(f"{where}: {result.describe()}; export bit-exact on every rank")
    log("OK")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
