"""Log-prob doctor: does SGLang, fed through our weight sync, sample from the Megatron policy?

``python tools/logprob_doctor.py --hf DIR [--mcore DIR] [--tp N] [--pp M]`` (under ``torchrun`` when
TP x PP > 1). Megatron loads the Megatron checkpoint (or converts the HF one on the fly); an in-process
SGLang engine on rank 0 serves the HF checkpoint; the Megatron weights are pushed into it through the
sync path; then for K random prompts the engine's returned log-probs are compared with Megatron's
log-probs of the same tokens at the same temperatures. Exit code 1 when the mismatch exceeds the
tolerance.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.distributed as dist

import megatron_hapo.parallel as hp


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="logprob_doctor", description=__doc__.split("\n\n")[0])
    p.add_argument("--hf", required=True, help="HF checkpoint directory (config, tokenizer, weights)")
    p.add_argument("--mcore", help="Megatron torch_dist checkpoint; default: convert --hf on the fly")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--prompts", type=int, default=8, help="number of random prompts")
    p.add_argument("--prompt-len", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--transport", choices=["tensor", "distributed"], default="tensor")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="both sides' dtype")
    p.add_argument("--tolerance", type=float, default=None, help="max |dlogp| (default 1e-3 fp32, 0.1 bf16)")
    p.add_argument("--perturb", type=float, default=1.0, help="scale the trainer's weights first (self-test)")
    p.add_argument("--check-before-sync", action="store_true", help="also report the mismatch before syncing")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from megatron_hapo.checkpoint_io import export_hf_weights, load_checkpoint, load_hf_weights
    from megatron_hapo.diagnostics.logprob_check import compare_logprobs, sample_temperatures
    from megatron_hapo.models import build_gpt_model
    from megatron_hapo.models.scoring import score_sequences
    from megatron_hapo.parallel.lead import broadcast_from_lead
    from megatron_hapo.rollout import GenerationParams, InProcessSGLangEngine
    from megatron_hapo.sync import DistributedTransport, TensorTransport, push_weights

    env = hp.init_distributed()
    hp.initialize_model_parallel(args.tp, args.pp, seed=args.seed)
    dtype = getattr(torch, args.dtype)
    tolerance = args.tolerance if args.tolerance is not None else (1e-3 if dtype == torch.float32 else 0.1)
    lead = env.rank == 0
    with hp.device_mode():
        model = build_gpt_model(args.hf, params_dtype=dtype)
        if args.mcore:
            load_checkpoint(model, args.mcore)
        else:
            load_hf_weights(model, args.hf)
        if args.perturb != 1.0:
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(args.perturb)
        vocab = model.hapo_arch.vocab_size
        engine = InProcessSGLangEngine(args.hf, seed=args.seed, dtype=args.dtype) if lead else None
        gen = torch.Generator().manual_seed(args.seed)
        prompts = torch.randint(0, vocab, (args.prompts, args.prompt_len), generator=gen).tolist()
        params = GenerationParams(
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, ignore_eos=True
        )

        def check(stage: str):
            samples = broadcast_from_lead(engine.generate(prompts, params) if lead else None)
            temps = [sample_temperatures(s, args.temperature) for s in samples]
            scored = score_sequences(
                model, [s.prompt_ids for s in samples], [s.response_ids for s in samples], temps, vocab
            )
            report = compare_logprobs(samples, [s.log_prob for s in scored], tolerance)
            if lead:
                print(f"[doctor] {stage}: {report}", flush=True)
            return report

        if args.check_before_sync:
            check("before sync")
        named = export_hf_weights(model)
        if lead:
            transport = (
                TensorTransport(engine) if args.transport == "tensor" else DistributedTransport(engine)
            )
            sync = push_weights(engine, transport, named, version="doctor")
            print(f"[doctor] synced {sync.tensors} tensors ({sync.bytes / 1e6:.1f} MB) via {args.transport} "
                  f"in {sync.seconds:.2f} s", flush=True)  # fmt: skip
        else:
            for _ in named:  # every rank takes part in the export's collectives
                pass
        report = check("after sync")
        if lead:
            engine.shutdown()
    hp.destroy_model_parallel()
    dist.destroy_process_group()
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
