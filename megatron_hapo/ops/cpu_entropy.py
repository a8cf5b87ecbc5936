"""The HAPO sampler's entropy on CPU: ``cpu_entropy.c``, built at first use and called through ctypes.

    H_b = log Σ_v e_bv − Σ_v e_bv s_bv / Σ_v e_bv,   s_b = z_b − max z_b,  e = exp(s)     z [B, V] -> H [B]

the definition of :func:`megatron_hapo.algorithms.token_entropy`, with the same results on masked (−inf)
and fully masked rows, in one vectorised read of each row after its max. On CPU it runs 2-3x faster than
inductor's kernel for the same function (whose exp is Sleef's; ``benchmarks/RESULTS.md``), which was the
whole gap between the HAPO sampler and stock SGLang sampling with top-k/top-p. GPUs keep the
``torch.compile`` kernel (Triton).

The library is compiled once per process with the host's C compiler (``$CC``, else ``cc`` or ``gcc``):
``-O3 -march=native -fopenmp``, a fraction of a second, into a temporary directory removed once it is
loaded, so a binary built for one CPU never reaches another. Rows are shared among
``torch.get_num_threads()`` threads of torch's own OpenMP team (see the C file). :func:`native_entropy_status` says whether it is available and,
if not, why: the sampler reports that at start-up and runs the eager definition instead.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("cpu_entropy.c")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC")
# gcc and clang vectorise with 256-bit registers by default even where AVX-512 exists; the kernel is
# compute-bound (one exp per logit), so the wider registers pay.
X86_FLAGS = ("-mprefer-vector-width=512",)


def native_entropy_status() -> str | None:
    """None when the native kernel is ready in this process, else why it is not (one line)."""
    library = _library()
    return library if isinstance(library, str) else None


def cpu_row_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy [...] in fp32 of softmax(logits) over the last dimension, for CPU logits [..., V] of any
    float dtype (converted to contiguous fp32 first, as token_entropy computes in fp32)."""
    if logits.device.type != "cpu":
        raise ValueError(f"cpu_row_entropy: logits are on {logits.device}; use fused_token_entropy")
    if logits.dim() < 1 or logits.shape[-1] == 0:
        raise ValueError(
            f"cpu_row_entropy expects logits [..., vocab] with vocab > 0, got {tuple(logits.shape)}"
        )
    library = _library()
    if isinstance(library, str):
        raise RuntimeError(f"cpu_row_entropy: the native kernel is unavailable: {library}")
    vocab = logits.shape[-1]
    z = logits.reshape(-1, vocab).float().contiguous()  # no copy for contiguous fp32 logits
    out = torch.empty(z.shape[0], dtype=torch.float32)
    library.hapo_row_entropy(z.data_ptr(), z.shape[0], vocab, out.data_ptr(), torch.get_num_threads())
    return out.reshape(logits.shape[:-1])


@functools.cache
def _library() -> ctypes.CDLL | str:
    """The loaded kernel, or why it could not be built (a string)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        return "no C compiler found (install gcc, or set CC)"
    command = shlex.split(compiler)  # CC may carry a launcher or flags ("ccache gcc")
    flags = FLAGS + (X86_FLAGS if platform.machine().lower() in ("x86_64", "amd64") else ())
    with tempfile.TemporaryDirectory(prefix="hapo_entropy_") as tmp:
        binary = Path(tmp) / "cpu_entropy.so"
        try:
            build = subprocess.run(
                [*command, *flags, "-o", str(binary), str(SOURCE)],
                capture_output=True,
                text=True,
                timeout=120,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{compiler} could not build {SOURCE.name}: {exc}"
        if build.returncode != 0:
            return f"{compiler} could not build {SOURCE.name}: {build.stderr.strip()[-400:]}"
        try:
            library = ctypes.CDLL(str(binary))  # stays mapped after the directory is removed
        except OSError as exc:
            return f"could not load the built kernel from {tmp} (a noexec mount? set TMPDIR elsewhere): {exc}"
    kernel = library.hapo_row_entropy
    kernel.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int]
    kernel.restype = None
    return library
