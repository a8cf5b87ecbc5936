"""Weight-sync throughput per transport: bytes moved and GB/s into an in-process SGLang engine.

    python benchmarks/bench_weight_sync.py [--hidden 512 --layers 8 --vocab 8192 --repeats 3]

Builds a random Llama of the given size (fp32 on CPU, bf16 on GPU), starts one in-process SGLang
engine on it, and pushes the full weights through each transport (tensor, distributed, disk) with the
same pause/flush/begin/end/version cycle the trainer uses. Prints one table; the engine start-up is
not timed. Time per sync includes the engine's own load_weights.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bucket-mb", type=int, default=64)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM

    from megatron_hapo.demo.tiny_models import make_tiny_hf_model
    from megatron_hapo.rollout import InProcessSGLangEngine
    from megatron_hapo.sync import DiskTransport, DistributedTransport, TensorTransport, push_weights

    dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_tiny_hf_model(
            Path(tmp) / "model",
            vocab_size=args.vocab,
            hidden_size=args.hidden,
            num_layers=args.layers,
            dtype=dtype,
        )
        weights = list(
            AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).state_dict().items()
        )
        engine = InProcessSGLangEngine(model_dir, dtype=dtype)
        transports = {
            "tensor": TensorTransport(engine),
            "distributed": DistributedTransport(engine, group_name="bench"),
            "disk": DiskTransport(engine, model_dir, Path(tmp) / "synced"),
        }
        rows = []
        for name, transport in transports.items():
            reports = [
                push_weights(
                    engine, transport, iter(weights), f"{name}-{i}", bucket_bytes=args.bucket_mb << 20
                )
                for i in range(args.repeats)
            ]
            secs = statistics.median(r.seconds for r in reports)
            rows.append(
                (
                    name,
                    reports[0].tensors,
                    reports[0].bytes / 1e6,
                    reports[0].buckets,
                    secs,
                    reports[0].bytes / secs / 1e9,
                )
            )
        transports["distributed"].close()
        engine.shutdown()

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"\nweight sync, Llama hidden={args.hidden} layers={args.layers} vocab={args.vocab} {dtype}, {device}, "
          f"median of {args.repeats}")  # fmt: skip
    print(f"| {'transport':<11} | tensors | {'MB':>8} | buckets | {'s/sync':>7} | {'GB/s':>6} |")
    print(f"|{'-' * 13}|---------|{'-' * 10}|---------|{'-' * 9}|{'-' * 8}|")
    for name, tensors, mb, buckets, secs, gbps in rows:
        print(f"| {name:<11} | {tensors:>7} | {mb:>8.1f} | {buckets:>7} | {secs:>7.3f} | {gbps:>6.2f} |")


if __name__ == "__main__":
    main()
