"""Helpers shared by the GPU-first benchmarks (bench_train_step, bench_triton_check, bench_sampler_math,
bench_export): device choice, synchronised timing, the Qwen2.5-1.5B shape, goal lines.

Imports torch only (plus megatron_hapo lazily): the GPU image has no SGLang and no Transformer Engine.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

# Dense bf16 peak of an H100/H200 SXM by the datasheet (MFU's usual denominator); an 8192^3 bf16 matmul
# measured ~790 TFLOP/s on this workplace's H200 (/work/.library/device/KINDS.md).
PEAK_BF16_FLOPS = 989e12


def qwen25_15b_config(tiny: bool = False) -> dict:
    """config.json of Qwen2.5-Math-1.5B (random init is all we need), or a tiny model of the same family."""
    from megatron_hapo.models.known_configs import KNOWN_CONFIGS

    cfg = dict(KNOWN_CONFIGS["Qwen2.5-Math-1.5B"], architectures=["Qwen2ForCausalLM"], torch_dtype="bfloat16")
    if tiny:
        cfg.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=1024)  # fmt: skip
    return cfg


def write_config(directory: Path, cfg: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(cfg))
    return directory


def pick_device(requested: str | None) -> str:
    device = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device visible")
    return device


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str, iters: int, warmup: int = 1) -> float:
    """Median seconds of ``iters`` calls of ``fn()`` after ``warmup`` calls, synchronised around each."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_mib(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"


def header(title: str, device: str) -> None:
    """First lines of every table: what, when, where, with which versions, and the command."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "absent"
    print(
        f"# {title}  {time.strftime('%Y-%m-%d %H:%M')}  device: {device_name(device)}  "
        f"torch {torch.__version__}  triton {triton_version}"
    )
    print(f"# command: {' '.join([Path(sys.executable).name, *sys.argv])}")


def goal(ok: bool | None, text: str) -> str:
    """A goal line printed beside the numbers: PASS / MISS / n/a (not measurable on this device)."""
    mark = "n/a" if ok is None else ("PASS" if ok else "MISS")
    return f"# goal [{mark}] {text}"


def run_workers(script: str, nproc: int, hidden: int, layers: int, title: str) -> int:
    """Write a random Qwen2 (``hidden``, ``layers``, vocab 512, fp32) to a temporary directory, print
    ``title``, then :func:`rerun_under_torchrun` with ``--model DIR`` added. Returns torchrun's exit code."""
    import tempfile

    from megatron_hapo.demo.tiny_models import make_tiny_hf_model

    with tempfile.TemporaryDirectory() as tmp:
        model = make_tiny_hf_model(
            Path(tmp) / "m", "qwen2", vocab_size=512, dtype="float32", hidden_size=hidden, num_layers=layers
        )
        print(title, flush=True)
        return rerun_under_torchrun(script, nproc, "--model", str(model))


def rerun_under_torchrun(script: str, nproc: int, *extra_args: str) -> int:
    """Run ``script`` again with this process's arguments (plus ``extra_args``) under torchrun: ``nproc``
    processes on this machine, one thread each (gloo); the workers see ``RANK`` in their environment.
    Returns torchrun's exit code."""
    import os
    import subprocess

    env = dict(os.environ, OMP_NUM_THREADS="1", TORCHDYNAMO_DISABLE="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", script]
    return subprocess.run([*cmd, *sys.argv[1:], *extra_args], env=env, cwd=REPO).returncode
