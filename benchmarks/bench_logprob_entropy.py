"""Benchmark: per-token log-prob + entropy from [N, V] logits, forward and forward+backward.

Implementations (TP = 1; ``--impls`` picks a subset):

    naive        eager torch: log_softmax + gather + softmax·log_softmax entropy, autograd
    peer-slime   peer-style reference written by us from slime's published description (not slime's code):
                 Megatron-style cross-entropy for the log-prob (saves the fp32 softmax) and a vocab-parallel
                 entropy function saving the fp32 logits and softmax, both with in-place backward
    megatron-ce  Megatron-Core's real ``vocab_parallel_cross_entropy`` (log-prob only: no entropy), if installed
    ours-torch   megatron_hapo.ops.vocab_parallel_logprob_entropy(impl="torch")
    ours-torch-inplace   the same with inplace_backward=True (gradient written into the logits buffer)
    ours-triton  megatron_hapo.ops.vocab_parallel_logprob_entropy(impl="triton"), CUDA only
    ours-lp-only the training path: ours (impl="auto": Triton on CUDA, torch on CPU) with entropy_grad=False,
                 backward of Σ g1·log_prob only (HAPO's entropy terms are constants)
    hapo-loss    megatron_hapo.ops.fused_hapo_loss end to end (impl="auto"; default HapoLossConfig, step
                 statistics, token-mean), backward of the scalar loss

Backward is of Σ g1·log_prob + g2·entropy with random g1, g2 (entropy_grad=True for ours), except for
megatron-ce (log-prob only). Each (implementation, shape) runs in a fresh subprocess so that its memory
peak is its own.

Memory: on CPU the rise of the process's resident set (VmHWM, reset through /proc/self/clear_refs) above
the inputs; on CUDA ``torch.cuda.max_memory_allocated`` above the inputs. "extra" subtracts one logits-sized
gradient, which every implementation must produce (in-place ones reuse the logits and go negative).

Bandwidth floor: a fwd+bwd pass must read the logits twice (forward and backward) and write the gradient
once; floor = (2·|logits| + |grad|) / copy bandwidth, with the bandwidth of ``dst.copy_(src)`` measured
in the same run (2 bytes moved per byte copied).

    .venv/bin/python benchmarks/bench_logprob_entropy.py            # CPU: N=4096, V=32768 fp32 (~3 min)
    .venv/bin/python benchmarks/bench_logprob_entropy.py --quick    # CPU, small shape, < 2 minutes
    .venv/bin/python benchmarks/bench_logprob_entropy.py --shapes 4096x32768xbf16   # any N x V x dtype list
    python benchmarks/bench_logprob_entropy.py --device cuda        # GPU: N=16384, V=151936 bf16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

MIB = 1 << 20
ALL_IMPLS = (
    "naive", "peer-slime", "megatron-ce", "ours-torch", "ours-torch-inplace", "ours-triton", "ours-lp-only",
    "hapo-loss",
)  # fmt: skip
NOTES = {
    "megatron-ce": "log-prob only",
    "ours-lp-only": "log-prob-only gradient (training path)",
    "hapo-loss": "fused_hapo_loss end to end",
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ----------------------------------------------------------------------------------------------- impls
def naive(logits, target):
    z = logits.float()
    log_p = torch.log_softmax(z, dim=-1)
    log_prob = log_p.gather(-1, target[:, None]).squeeze(-1)
    entropy = -(torch.softmax(z, dim=-1) * log_p).sum(-1)
    return log_prob, entropy


class _PeerCrossEntropyLogProb(torch.autograd.Function):
    """Megatron-style CE (from its description): saves the fp32 softmax, backward in place into it."""

    @staticmethod
    def forward(ctx, logits, target):
        shifted = logits.float() - logits.float().amax(-1, keepdim=True)
        rows = torch.arange(len(target), device=logits.device)
        predicted = shifted[rows, target].clone()
        softmax = shifted.exp_()
        sum_exp = softmax.sum(-1)
        softmax.div_(sum_exp[:, None])
        ctx.save_for_backward(softmax, target)
        ctx.dtype = logits.dtype
        return predicted - sum_exp.log()

    @staticmethod
    def backward(ctx, grad):
        softmax, target = ctx.saved_tensors
        rows = torch.arange(len(target), device=softmax.device)
        softmax[rows, target] -= 1.0
        softmax.mul_(-grad[:, None])
        return softmax.to(ctx.dtype), None


class _PeerEntropy(torch.autograd.Function):
    """slime's vocab-parallel entropy (from its description): saves fp32 logits and softmax."""

    @staticmethod
    def forward(ctx, logits):
        x = logits.float()
        m = x.amax(-1, keepdim=True)
        softmax = (x - m).exp_()
        sum_exp = softmax.sum(-1, keepdim=True)
        softmax.div_(sum_exp)
        sum_p_x = (softmax * x).sum(-1, keepdim=True)
        ctx.save_for_backward(x, softmax, sum_p_x)
        ctx.dtype = logits.dtype
        return (m + sum_exp.log() - sum_p_x).squeeze(-1)

    @staticmethod
    def backward(ctx, grad):
        x, softmax, sum_p_x = ctx.saved_tensors
        x.sub_(sum_p_x)
        softmax.mul_(x)
        softmax.mul_(-grad[:, None])
        x.add_(sum_p_x)
        return softmax.to(ctx.dtype)


def peer_slime(logits, target):
    return _PeerCrossEntropyLogProb.apply(logits, target), _PeerEntropy.apply(logits)


def make_megatron_ce(device):
    import torch.distributed as dist
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    if not dist.is_initialized():
        backend = "nccl" if device == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    group = dist.new_group([0])

    def megatron_ce(logits, target):
        loss = vocab_parallel_cross_entropy(logits[:, None, :], target[:, None], tp_group=group)
        return -loss.squeeze(1), None

    return megatron_ce


def make_ours(impl, inplace=False, entropy_grad=True):
    from megatron_hapo.ops import vocab_parallel_logprob_entropy

    def ours(logits, target):
        lp, ent = vocab_parallel_logprob_entropy(
            logits, target, entropy_grad=entropy_grad, impl=impl, inplace_backward=inplace
        )
        return lp, ent if entropy_grad else None  # None: the backward takes the log-prob term only

    return ours


def make_hapo_loss():
    """fused_hapo_loss with fixed per-token inputs; returns (scalar loss, None)."""
    from megatron_hapo.algorithms import EntropyStats, HapoLossConfig
    from megatron_hapo.ops import fused_hapo_loss

    cfg = HapoLossConfig()
    stats = EntropyStats(pivot=2.0, sigma=1.0, pos_scale=1.0, neg_scale=1.0)
    cache = {}

    def hapo_loss(logits, target):
        n = target.shape[0]
        if n not in cache:
            g = torch.Generator(device=target.device).manual_seed(1)
            old = -torch.rand(n, device=target.device, generator=g) * 4 - 10  # near log(1/V) of the logits
            adv = torch.randn(n, device=target.device, generator=g)
            cache[n] = (old, adv, torch.ones(n, device=target.device))
        old, adv, mask = cache[n]
        loss, _ = fused_hapo_loss(logits, target, old, adv, mask, cfg, stats=stats)
        return loss, None

    return hapo_loss


def build(name, device):
    if name == "naive":
        return naive
    if name == "peer-slime":
        return peer_slime
    if name == "megatron-ce":
        return make_megatron_ce(device)
    if name == "ours-torch":
        return make_ours("torch")
    if name == "ours-torch-inplace":
        return make_ours("torch", inplace=True)
    if name == "ours-triton":
        return make_ours("triton")
    if name == "ours-lp-only":
        return make_ours("auto", entropy_grad=False)
    if name == "hapo-loss":
        return make_hapo_loss()
    raise ValueError(f"unknown implementation {name!r}; choose from {ALL_IMPLS}")


# ---------------------------------------------------------------------------------------------- memory
class CpuMemory:
    """Peak resident-set rise: VmHWM after resetting it to the current VmRSS via /proc/self/clear_refs."""

    method = "CPU: peak RSS rise (VmHWM after /proc/self/clear_refs reset), fresh process per row"

    @staticmethod
    def _status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"{key} not in /proc/self/status")

    def start(self):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the high-water mark to the current RSS
        self.base = self._status("VmRSS")

    def peak(self):
        return self._status("VmHWM") - self.base


class CudaMemory:
    method = "CUDA: torch.cuda.max_memory_allocated rise above the inputs"

    def start(self):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self.base = torch.cuda.memory_allocated()

    def peak(self):
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - self.base


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------- workers
def mutates_logits(impl: str, dtype: str) -> bool:
    """In-place implementations overwrite the logits (Megatron's CE does so for fp32 input)."""
    return impl.endswith("inplace") or (impl == "megatron-ce" and dtype == "fp32")


def make_inputs(spec: dict):
    device, n, v, dtype = spec["device"], spec["n"], spec["v"], DTYPES[spec["dtype"]]
    torch.manual_seed(0)
    logits = torch.empty(n, v, dtype=dtype, device=device).normal_(0.0, 2.0)
    target = torch.randint(0, v, (n,), device=device)
    return logits, target, torch.randn(n, device=device), torch.randn(n, device=device)


def step(fn, logits, target, g1, g2, backward: bool) -> None:
    x = logits.detach().requires_grad_(True)
    lp, ent = fn(x, target)
    if backward:
        if lp.dim() == 0:  # hapo-loss: the scalar loss itself
            lp.backward()
            return
        loss = (lp * g1).sum() + (0 if ent is None else (ent * g2).sum())
        loss.backward()


def worker_memory(spec: dict) -> dict:
    """Peak memory of the first forward and the first forward+backward, in this fresh process."""
    logits, target, g1, g2 = make_inputs(spec)
    fn = build(spec["impl"], spec["device"])
    mem = CudaMemory() if spec["device"] == "cuda" else CpuMemory()
    pristine = logits.clone() if mutates_logits(spec["impl"], spec["dtype"]) else None
    mem.start()
    step(fn, logits, target, g1, g2, backward=False)
    sync(spec["device"])
    fwd_peak = mem.peak()
    if pristine is not None:
        logits.copy_(pristine)
    mem.start()
    step(fn, logits, target, g1, g2, backward=True)
    sync(spec["device"])
    total_peak = mem.peak()
    grad_bytes = logits.numel() * logits.element_size()
    return dict(
        fwd_peak_mib=fwd_peak / MIB, peak_mib=total_peak / MIB, extra_mib=(total_peak - grad_bytes) / MIB
    )


def worker_timing(spec: dict) -> dict:
    """Times of every implementation on one shape, interleaved round by round (with a copy-bandwidth
    probe of the same size) so that load drift on a shared machine hits all of them alike; round 0
    warms up (allocator, kernel compilation) and is not counted."""
    logits, target, g1, g2 = make_inputs(spec)
    pristine = logits.clone() if any(mutates_logits(i, spec["dtype"]) for i in spec["impls"]) else None
    copy_dst = torch.empty_like(logits)
    fns = {impl: build(impl, spec["device"]) for impl in spec["impls"]}
    times = {(impl, bwd): [] for impl in fns for bwd in (False, True)}
    copy_times = []
    for rnd in range(spec["repeats"] + 1):
        for impl, fn in fns.items():
            for bwd in (False, True):
                if mutates_logits(impl, spec["dtype"]):
                    logits.copy_(pristine)
                sync(spec["device"])
                t0 = time.perf_counter()
                step(fn, logits, target, g1, g2, backward=bwd)
                sync(spec["device"])
                if rnd:
                    times[impl, bwd].append(time.perf_counter() - t0)
        sync(spec["device"])
        t0 = time.perf_counter()
        copy_dst.copy_(logits)
        sync(spec["device"])
        if rnd:
            copy_times.append(time.perf_counter() - t0)
    pick = min if spec["device"] == "cpu" else statistics.median  # shared CPUs: best of N is stablest
    return dict(
        impls={impl: dict(fwd_s=pick(times[impl, False]), fwd_bwd_s=pick(times[impl, True])) for impl in fns},
        copy_bw=2 * logits.numel() * logits.element_size() / min(copy_times),  # read + write
    )


# ---------------------------------------------------------------------------------------------- driver
def run_worker(kind: str, spec: dict, timeout: float) -> dict:
    # prepend: the GPU run puts its carried wheels (megatron-core) on PYTHONPATH too
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, TORCHDYNAMO_DISABLE="1", PYTHONPATH=pythonpath)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(dict(spec, kind=kind))]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(error=f"timed out after {timeout:.0f}s")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (proc.stderr or proc.stdout).strip().splitlines()
    return dict(error=tail[-1] if tail else f"rc={proc.returncode}")


def floor_s(row: dict) -> float:
    """Bandwidth floor of one fwd+bwd: logits read twice, gradient written once."""
    return 3 * row["n"] * row["v"] * DTYPES[row["dtype"]].itemsize / row["copy_bw"]


def extra_share(row: dict, ref: dict) -> float:
    """Extra fwd+bwd memory of ``row`` as a percentage of ``ref``'s (in-place rows count as 0)."""
    return 100 * max(row["extra_mib"], 0.0) / max(ref["extra_mib"], 1e-9)


def summary(rows: list[dict]) -> list[str]:
    """Per shape: our rows against naive torch and the peer-style reference (which also computes entropy)."""
    lines = []
    for shape in dict.fromkeys((r["n"], r["v"], r["dtype"]) for r in rows):
        same = {r["impl"]: r for r in rows if (r["n"], r["v"], r["dtype"]) == shape and "error" not in r}
        if not same:
            continue
        first = next(iter(same.values()))
        lines.append(
            f"# {shape[0]}x{shape[1]} {shape[2]}: copy bandwidth {first['copy_bw'] / 1e9:.1f} GB/s, "
            f"fwd+bwd floor {floor_s(first) * 1e3:.1f} ms"
        )
        naive_row, peer, mce = same.get("naive"), same.get("peer-slime"), same.get("megatron-ce")
        for ours in ("ours-triton", "ours-torch", "ours-lp-only", "hapo-loss"):
            if ours not in same:
                continue
            r = same[ours]
            parts = [f"{r['fwd_bwd_s'] / floor_s(r):.1f}x floor"]
            if naive_row:
                parts.append(
                    f"{naive_row['fwd_bwd_s'] / r['fwd_bwd_s']:.1f}x faster than naive, "
                    f"extra memory {extra_share(r, naive_row):.1f}% of naive's"
                )
            if peer and ours in ("ours-triton", "ours-torch"):
                parts.append(f"{peer['fwd_bwd_s'] / r['fwd_bwd_s']:.1f}x faster than peer-slime")
            if mce and ours in ("ours-lp-only", "hapo-loss"):
                parts.append(
                    f"{mce['fwd_bwd_s'] / r['fwd_bwd_s']:.1f}x faster than megatron-ce, "
                    f"extra memory {r['extra_mib']:.0f} MiB vs megatron-ce's {mce['extra_mib']:.0f} MiB"
                )
            lines.append(f"#   {ours}: " + ", ".join(parts))
        fused = same.get("ours-triton") or same.get("ours-torch")
        if fused and naive_row:
            speed = naive_row["fwd_bwd_s"] / fused["fwd_bwd_s"]
            share = extra_share(fused, naive_row)
            ok = speed >= 3.0 and share < 10.0
            lines.append(
                f"# goal [{'PASS' if ok else 'MISS'}] fused op ({fused['impl']}) >= 3x faster than naive "
                f"({speed:.1f}x) with < 10% of naive's extra memory ({share:.1f}%)"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--quick", action="store_true", help="small CPU shapes, fewer repeats (< 2 minutes)")
    parser.add_argument("--shapes", help="N x V x dtype list, e.g. '4096x32768xfp32,1024x151936xbf16'")
    parser.add_argument("--impls", default=",".join(ALL_IMPLS), help=f"comma list from {ALL_IMPLS}")
    parser.add_argument("--repeats", type=int, help="timed calls per row (after one warm-up)")
    parser.add_argument("--threads", type=int, help="torch CPU threads in the workers (default: torch's)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per row")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        spec = json.loads(args.worker)
        if spec.get("threads"):
            torch.set_num_threads(spec["threads"])
        result = worker_memory(spec) if spec["kind"] == "memory" else worker_timing(spec)
        print(json.dumps(result), flush=True)
        os._exit(0)  # the result is out: no process-group or CUDA teardown may hold the driver's timeout

    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device visible")
    if args.shapes:
        shapes = [tuple(s.split("x")) for s in args.shapes.split(",")]
    elif device == "cuda":
        shapes = [("4096", "151936", "bf16")] if args.quick else [("16384", "151936", "bf16")]
    else:
        shapes = [("1024", "8192", "fp32")] if args.quick else [("4096", "32768", "fp32")]
    repeats = args.repeats or (2 if args.quick else 4 if device == "cpu" else 10)
    impls = [i for i in args.impls.split(",") if i]
    unknown = set(impls) - set(ALL_IMPLS)
    if unknown:
        sys.exit(f"unknown --impls {sorted(unknown)}; choose from {ALL_IMPLS}")
    if device == "cpu":
        impls = [i for i in impls if i != "ours-triton"]  # the interpreter is a test tool, not a benchmark

    started = time.time()
    threads = args.threads or torch.get_num_threads()
    rows = []
    for n, v, dt in shapes:
        base = dict(n=int(n), v=int(v), dtype=dt, device=device, repeats=repeats, threads=threads)
        memory = {}
        for impl in impls:  # a fresh process per implementation: its peak is its own
            memory[impl] = run_worker("memory", dict(base, impl=impl), args.timeout)
            # on stdout as it comes: a run cut short by its time limit keeps what it measured
            print(f"# memory {impl} {n}x{v} {dt}: {json.dumps(memory[impl])} ({time.time() - started:.0f}s)",
                  flush=True)  # fmt: skip
        ok = [i for i in impls if "error" not in memory[i]]
        timing = run_worker("timing", dict(base, impls=ok), args.timeout) if ok else {}
        print(f"# timing {n}x{v} {dt}: {json.dumps(timing)} ({time.time() - started:.0f}s)", flush=True)
        for impl in impls:
            err = memory[impl].get("error") or timing.get("error")
            row = dict(base, impl=impl)
            if not err:
                row.update(memory[impl], **timing["impls"][impl], copy_bw=timing["copy_bw"])
            rows.append(dict(row, error=err) if err else row)

    dev_name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {threads} torch threads"
    print(
        f"# bench_logprob_entropy  {time.strftime('%Y-%m-%d %H:%M')}  device: {dev_name}  torch {torch.__version__}"
    )
    print(f"# command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    memory_method = CudaMemory.method if device == "cuda" else CpuMemory.method
    print(f"# memory: {memory_method}; extra = fwd+bwd peak - one logits-sized gradient")
    print(
        "# floor = (2 x logits read + gradient written) / copy bandwidth (dst.copy_(src) of the logits, same run)"
    )
    print(
        f"# time: {'best' if device == 'cpu' else 'median'} of {repeats} interleaved calls after one warm-up"
    )
    print()
    print("| impl | N x V dtype | fwd ms | fwd+bwd ms | fwd peak MiB | fwd+bwd extra MiB | x floor | note |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        shape = f"{r['n']} x {r['v']} {r['dtype']}"
        if "error" in r:
            print(f"| {r['impl']} | {shape} | - | - | - | - | - | {r['error'][:80]} |")
            continue
        note = NOTES.get(r["impl"], "")
        if mutates_logits(r["impl"], r["dtype"]):
            note = (note + "; " if note else "") + "gradient reuses the logits buffer"
        print(
            f"| {r['impl']} | {shape} | {r['fwd_s'] * 1e3:.0f} | {r['fwd_bwd_s'] * 1e3:.0f} | "
            f"{r['fwd_peak_mib']:.0f} | {r['extra_mib']:.0f} | {r['fwd_bwd_s'] / floor_s(r):.1f} | {note} |"
        )
    print()
    for line in summary(rows):
        print(line)
    print(f"# total {time.time() - started:.0f}s")


if __name__ == "__main__":
    main()
