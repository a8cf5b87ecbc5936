"""Benchmark (e): trainer-side weight export of a Qwen2.5-1.5B-shaped model, in GB/s, no rollout engine.

Three stages, each timed over the whole model (median of ``--iters``), with a null engine that accepts
everything, so only the trainer's side is measured:

    export        ``export_hf_weights(model)`` iterated to the end (Megatron -> HF names and layouts)
    + buckets     ``push_weights`` over that stream: 512 MiB buckets, each tensor ``.detach().contiguous()``
                  as ``TensorTransport`` hands it to the engine
    + fp8         the same with ``fp8_rollout_stream`` (blockwise FP8 E4M3, 128 x 128 scales) on the way

GB/s = bytes of the exported bf16 HF tensors / seconds (the fp8 row also counts its input bytes). For scale,
the device's copy bandwidth of a tensor of the same size (read + write) is printed. No goal is stated in the
issue; the table is the reference for later syncs.

    python benchmarks/bench_export.py --device cuda                     # 1.5B bf16, ~30 s on an H200
    .venv/bin/python benchmarks/bench_export.py --device cpu --tiny     # tiny model, proves the script
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from bench_common import header, pick_device, qwen25_15b_config, sync, timed, write_config  # noqa: E402

from megatron_hapo.rollout.inflight import RequestGate  # noqa: E402


class NullEngine:
    """Accepts a weight update and does nothing: isolates the trainer's side of the sync."""

    request_gate = RequestGate()

    def recover_from_sync_failure(self, exc):
        return False

    def pause(self): ...
    def resume(self): ...
    def flush_cache(self): ...
    def begin_weight_update(self): ...
    def end_weight_update(self): ...
    def set_weight_version(self, version): ...


class ContiguousTransport:
    """What TensorTransport does before the engine call: detached contiguous tensors."""

    name = "null"

    def send(self, bucket):
        self.last = [(n, t.detach().contiguous()) for n, t in bucket]

    def finish(self):
        self.last = None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"))
    ap.add_argument(
        "--tiny", action="store_true", help="tiny Qwen2-family model (hidden 256: FP8 blocks fit)"
    )
    ap.add_argument("--iters", type=int, default=3)
    args = ap.parse_args()
    device = pick_device(args.device)

    import megatron_hapo.parallel as hp
    from megatron_hapo.checkpoint_io import export_hf_weights
    from megatron_hapo.models import build_gpt_model
    from megatron_hapo.sync import push_weights
    from megatron_hapo.sync.fp8 import fp8_rollout_stream

    started = time.time()
    hp.init_distributed()
    hp.initialize_model_parallel(1, 1)
    cfg = qwen25_15b_config(args.tiny)
    if args.tiny:
        cfg.update(hidden_size=256, intermediate_size=512)
    model_dir = write_config(Path(tempfile.mkdtemp(prefix="bench_export_")), cfg)
    with hp.device_mode():
        model = build_gpt_model(model_dir, params_dtype=torch.bfloat16, spec="local")
        build_s = time.time() - started
        n_bytes = sum(t.numel() * t.element_size() for _, t in export_hf_weights(model))
        n_tensors = sum(1 for _ in export_hf_weights(model))

        def export_only():
            for _ in export_hf_weights(model):
                pass

        def with_buckets():
            return push_weights(
                NullEngine(), ContiguousTransport(), export_hf_weights(model), version="bench"
            )

        def with_fp8():
            stream = fp8_rollout_stream(export_hf_weights(model))
            return push_weights(NullEngine(), ContiguousTransport(), stream, version="bench")

        rows = [
            ("export_hf_weights", timed(export_only, device, args.iters)),
            ("+ buckets (512 MiB, contiguous)", timed(with_buckets, device, args.iters)),
            ("+ blockwise FP8 quantisation", timed(with_fp8, device, args.iters)),
        ]
        fp8_report = with_fp8()
        probe = torch.empty(n_bytes // 2, dtype=torch.bfloat16, device=device)
        dst = torch.empty_like(probe)
        copy_s = timed(lambda: dst.copy_(probe), device, 5)
        sync(device)

    header("bench_export (trainer-side weight export, null engine)", device)
    print(
        f"# model: {'tiny ' if args.tiny else ''}Qwen2.5-1.5B shape, bf16, local spec, random init (built in "
        f"{build_s:.0f} s); {n_tensors} HF tensors, {n_bytes / 1e9:.3f} GB; FP8 stream sends {fp8_report.bytes / 1e9:.3f} GB"
    )
    print(
        f"# copy bandwidth (same bytes, read + write): {2 * n_bytes / copy_s / 1e9:.0f} GB/s; median of {args.iters}"
    )
    print()
    print("| stage | s | GB/s (bf16 bytes) |")
    print("|---|---:|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} | {n_bytes / seconds / 1e9:.1f} |")
    print()
    print("# goal: none stated (issue 16); reference numbers for the weight sync")
    print(f"# total {time.time() - started:.0f} s")
    hp.destroy_model_parallel()
    torch.distributed.destroy_process_group()  # NCCL's own teardown at exit can hang


if __name__ == "__main__":
    main()
