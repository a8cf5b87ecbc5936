"""Evaluating several checkpoints: a fresh engine per checkpoint against one engine that loads each next
checkpoint from disk (``WeightSynchronizer.load``, what ``hapo-eval --model A B C`` does), side by side in one
run, on the same seeded evaluation.

    python benchmarks/bench_eval_checkpoints.py [--checkpoints 3] [--hidden 512] [--layers 8]

Builds ``--checkpoints`` random checkpoints of one Qwen2-shaped model (same config and tokenizer, other
weights) and a small benchmark, then times per checkpoint: engine start + evaluation (fresh), and load +
evaluation (one engine), and checks both give the same answers. CPU here; on GPUs an engine start also
captures CUDA graphs and allocates the KV cache, so the gap grows.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402


def make_checkpoints(root: Path, count: int, hidden: int, layers: int) -> list[Path]:
    from safetensors.torch import load_file, save_file

    from megatron_hapo.demo.tiny_models import make_tiny_hf_model

    first = make_tiny_hf_model(
        root / "ckpt_0", family="qwen2", hidden_size=hidden, num_layers=layers, initializer_range=0.3
    )
    out = [first]
    for i in range(1, count):
        path = shutil.copytree(first, root / f"ckpt_{i}")
        weights = load_file(path / "model.safetensors")
        gen = torch.Generator().manual_seed(i)
        moved = {n: t + (0.05 * torch.randn(t.shape, generator=gen)).to(t.dtype) for n, t in weights.items()}
        save_file(moved, path / "model.safetensors", metadata={"format": "pt"})
        out.append(path)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=8)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from megatron_hapo.eval import evaluate, load_benchmarks
    from megatron_hapo.rollout import InProcessSGLangEngine
    from megatron_hapo.sync import VERIFY_NAME, WeightSynchronizer

    root = Path(tempfile.mkdtemp(prefix="bench-eval-ckpts-"))
    try:
        checkpoints = make_checkpoints(root, args.checkpoints, args.hidden, args.layers)
        bench = root / "arith.parquet"
        pq.write_table(
            pq.read_table(REPO / "examples/data/tiny_math_val.parquet").slice(0, args.prompts), bench
        )
        tokenizer = AutoTokenizer.from_pretrained(checkpoints[0])
        loaded = load_benchmarks([bench], tokenizer)
        kwargs = dict(k=4, max_new_tokens=16, keep_samples=True, seed=7)

        def run_eval(engine, model):
            return evaluate(engine, tokenizer, loaded, model=str(model), **kwargs)

        def answers(result):
            return [r["response"] for r in result.samples["arith"]]

        fresh, fresh_answers = [], []
        for model in checkpoints:
            t0 = time.perf_counter()
            engine = InProcessSGLangEngine(str(model), seed=0, hapo_sampler=True)
            started = time.perf_counter() - t0
            result = run_eval(engine, model)
            fresh.append((started, time.perf_counter() - t0 - started))
            fresh_answers.append(answers(result))
            engine.shutdown()

        shared, shared_answers = [], []
        t0 = time.perf_counter()
        engine = InProcessSGLangEngine(str(checkpoints[0]), seed=0, hapo_sampler=True)
        first_start = time.perf_counter() - t0
        synchronizer = WeightSynchronizer(engine, None, verify_name=VERIFY_NAME)
        for i, model in enumerate(checkpoints):
            t0 = time.perf_counter()
            if i > 0:
                synchronizer.load(model, version=str(model))
            loaded_s = time.perf_counter() - t0 if i > 0 else first_start
            result = run_eval(engine, model)
            shared.append((loaded_s, time.perf_counter() - t0 - (loaded_s if i > 0 else 0)))
            shared_answers.append(answers(result))
        engine.shutdown()

        params = sum(t.numel() for t in _tensors(checkpoints[0]))
        print(f"\n{args.checkpoints} checkpoints, {params / 1e6:.1f} M parameters, {args.prompts} prompts x 4 "
              f"answers (seeded), CPU, torch {torch.__version__}\n")  # fmt: skip
        print(
            "| checkpoint | fresh engine: start s | eval s | one engine: start/load s | eval s | same answers |"
        )
        print("|---|---:|---:|---:|---:|---|")
        for i in range(args.checkpoints):
            (fs, fe), (ss, se) = fresh[i], shared[i]
            what = "start" if i == 0 else "load"
            same = fresh_answers[i] == shared_answers[i]
            print(f"| {i} | {fs:.2f} | {fe:.2f} | {ss:.2f} ({what}) | {se:.2f} | {same} |")
        total_fresh = sum(a + b for a, b in fresh)
        total_shared = sum(a + b for a, b in shared)
        print(f"| **all** | {total_fresh:.1f} s in all | | {total_shared:.1f} s in all | | |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _tensors(model: Path):
    from safetensors.torch import load_file

    return load_file(model / "model.safetensors").values()


if __name__ == "__main__":
    main()
