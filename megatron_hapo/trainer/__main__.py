"""``python -m megatron_hapo.trainer --config FILE [key=value ...]`` = ``hapo-train`` (e.g. under torchrun)."""

from megatron_hapo.cli import train_main

if __name__ == "__main__":
    train_main()
