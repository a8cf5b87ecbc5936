"""What an idle SGLang engine costs the trainer beside it: SGLang's ``sleep_on_idle`` off (stock) and on (what
``rollout/inprocess.py::base_server_args`` gives every engine we start), side by side in one run.

For each setting: start an in-process engine on a tiny random model, serve one batch, then, while it is idle,
(1) measure its scheduler's CPU use over a few seconds and (2) time a fixed training-like workload in this
process (fp32 MLP forward + backward with all of torch's threads, as the trainer's update runs). The row
"no engine" is the workload alone.

    python benchmarks/bench_idle_engine.py [--seconds 3] [--repeats 3]

CPU only (the point on GPU nodes is the same core per scheduler; the workload there runs on the GPU, the
CPU work beside it is data loading, rewards and the trainer's Python).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402


def _children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's live descendants (the engine's scheduler and detokenizer)."""
    me, ticks = os.getpid(), 0
    parents: dict[int, int] = {}
    times: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = int(fields[11]) + int(fields[12])
    for pid, t in times.items():
        p = parents.get(pid)
        while p not in (None, 0, 1, me):
            p = parents.get(p)
        if p == me:
            ticks += t
    return ticks / os.sysconf("SC_CLK_TCK")


def _workload_s(repeats: int) -> float:
    """Median seconds of a fixed fp32 MLP forward + backward (4096 tokens, 512 -> 2048 -> 512, 4 layers)."""
    torch.manual_seed(0)
    layers = [torch.nn.Sequential(torch.nn.Linear(512, 2048), torch.nn.SiLU(), torch.nn.Linear(2048, 512))]
    model = torch.nn.Sequential(*(layers * 4))
    x = torch.randn(4096, 512)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(4):
            model(x).square().mean().backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _measure(model_dir: Path, sleep_on_idle: bool, seconds: float, repeats: int) -> tuple[float, float]:
    from megatron_hapo.rollout import GenerationParams, InProcessSGLangEngine

    engine = InProcessSGLangEngine(
        str(model_dir), dtype="float32", sleep_on_idle=sleep_on_idle, log_file=model_dir / "sglang.log"
    )
    try:
        engine.generate([[5, 6, 7]] * 4, GenerationParams(n=2, max_new_tokens=8, temperature=1.0))
        time.sleep(1.0)  # let the scheduler reach its idle loop
        before, start = _children_cpu_seconds(), time.monotonic()
        time.sleep(seconds)
        idle_cpu = (_children_cpu_seconds() - before) / (time.monotonic() - start)
        return idle_cpu, _workload_s(repeats)
    finally:
        engine.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="idle window for the CPU measurement")
    parser.add_argument("--repeats", type=int, default=3, help="workload repeats (median)")
    args = parser.parse_args()
    if torch.cuda.is_available():
        sys.exit("bench_idle_engine: a CPU benchmark (the engine's scheduler competes with CPU work)")
    from megatron_hapo.demo.policy import make_demo_model

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_demo_model(Path(tmp) / "model")
        alone = _workload_s(args.repeats)
        rows: list[tuple[str, float | None, float]] = [("no engine", None, alone)]
        for sleep_on_idle in (False, True):
            idle_cpu, busy = _measure(model_dir, sleep_on_idle, args.seconds, args.repeats)
            rows.append((f"idle engine, sleep_on_idle={sleep_on_idle}", idle_cpu, busy))
    print(f"\nidle in-process SGLang engine vs a {torch.get_num_threads()}-thread training workload "
          f"({os.cpu_count()} CPUs)\n")  # fmt: skip
    print("| setting | engine CPU-s/s while idle | workload s | vs no engine |")
    print("|---|---:|---:|---:|")
    for name, cpu, seconds in rows:
        cpu_text = "-" if cpu is None else f"{cpu:.2f}"
        print(f"| {name} | {cpu_text} | {seconds:.2f} | {seconds / alone:.2f}x |")


if __name__ == "__main__":
    main()
