"""``hapo-train --config FILE [--preset hapo|dapo|grpo] [--dry-run] [--verbose] [key=value ...]``."""

from __future__ import annotations

import os
import sys

from megatron_hapo.cli import report_errors


def main(argv: list[str] | None = None) -> None:
    """``hapo-train --config FILE [--preset hapo|dapo|grpo] [--dry-run] [--verbose] [key=value ...]``
    (python or torchrun)."""
    import argparse

    from megatron_hapo.config.presets import preset_names

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
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also print Megatron's and SGLang's output and Python warnings (otherwise only in run_dir/logs/), "
        "and the traceback of errors; same as HAPO_VERBOSE=1",
    )
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, applied last")
    args = parser.parse_intermixed_args(argv)
    from megatron_hapo import console

    console.set_verbose(args.verbose)
    sys.exit(report_errors("hapo-train", lambda: _train(args)))


def _train(args) -> None:
    from megatron_hapo import console
    from megatron_hapo.config import load_config
    from megatron_hapo.config.presets import preset_overrides

    overrides = [*(preset_overrides(args.preset) if args.preset else []), *args.overrides]
    if args.dry_run:
        from megatron_hapo.config.plan import dry_run

        print(dry_run(args.config, overrides))  # ConfigError / PlanError: reported by report_errors
        return
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    # every problem is reported before any heavy work (Megatron, SGLang) starts
    cfg = load_config(args.config, overrides, world_size=world_size)
    console.filter_benign_warnings()  # before Megatron and SGLang are imported: most are import-time
    log_file = console.setup_logging(cfg.trainer.run_dir, cfg.logging.level)
    if console.rank() == 0:
        where = (
            ""
            if console.verbose()
            else f"; Megatron/SGLang output in {log_file.parent}/ (--verbose shows it)"
        )
        print(f"hapo-train: run directory {cfg.trainer.run_dir}{where}", flush=True)
    import megatron_hapo.parallel  # noqa: F401  (CPU patches before anything imports megatron)
    from megatron_hapo.trainer import train

    train(cfg)
    import torch.distributed as dist

    dist.destroy_process_group()
