"""Console scripts: hapo-train, hapo-eval, hapo-convert."""

from __future__ import annotations

import logging
import os
import sys


def train_main(argv: list[str] | None = None) -> None:
    """``hapo-train --config FILE [--preset hapo|dapo|grpo] [--dry-run] [key=value ...]`` (python or torchrun)."""
    import argparse

    from megatron_hapo.config.presets import preset_names, preset_overrides

    argv = sys.argv[1:] if argv is None else argv
    if "--help-config" in argv:
        from megatron_hapo.config import help_config

        print(help_config())
        return
    parser = argparse.ArgumentParser(
        prog="hapo-train",
        description="HAPO RL training on Megatron-Core + SGLang. Run under torchrun for several processes.",
        epilog="--help-config lists every config key. Overrides: key.sub=value (YAML values).",
    )
    parser.add_argument("--config", required=True, help="YAML config (may name parents under defaults:)")
    parser.add_argument(
        "--preset",
        choices=preset_names(),
        help="algorithm preset (megatron_hapo/config/presets/NAME.yaml) applied before the overrides",
    )
    parser.add_argument("--help-config", action="store_true", help="print every config key and exit")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate against cluster.nodes x cluster.gpus_per_node and print layout, memory per GPU and "
        "tokens per step; no GPU or model files needed",
    )
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, applied last")
    args = parser.parse_intermixed_args(argv)

    from megatron_hapo.config import ConfigError, load_config

    overrides = [*(preset_overrides(args.preset) if args.preset else []), *args.overrides]
    if args.dry_run:
        from megatron_hapo.config.plan import dry_run

        try:
            print(dry_run(args.config, overrides))
        except (ConfigError, ValueError) as e:
            sys.exit(f"hapo-train: {e}")
        return
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    try:  # every problem is reported before any heavy work (Megatron, SGLang) starts
        cfg = load_config(args.config, overrides, world_size=world_size)
    except ConfigError as e:
        sys.exit(f"hapo-train: {e}")
    import megatron_hapo.parallel  # noqa: F401  (CPU patches before anything imports megatron)
    from megatron_hapo.trainer import train

    logging.basicConfig(level=getattr(logging, cfg.logging.level), format="%(asctime)s %(name)s: %(message)s")
    train(cfg)
    import torch.distributed as dist

    dist.destroy_process_group()


def eval_main(argv: list[str] | None = None) -> None:
    from megatron_hapo.eval.cli import main

    sys.exit(main(argv))


def convert_main(argv: list[str] | None = None) -> None:
    from megatron_hapo.models.convert import main

    sys.exit(main(argv))
