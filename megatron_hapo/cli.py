"""Console scripts: hapo-train, hapo-eval, hapo-convert."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable

from megatron_hapo.config.errors import HapoError


def report_errors(prog: str, fn: Callable[[], int | None]) -> int:
    """Run ``fn`` and turn a :class:`~megatron_hapo.config.errors.HapoError` into ``prog: <message>`` on
    stderr and exit status 1. Only rank 0 prints it (every rank usually meets the same problem; the
    others exit 1 quietly, their log file keeps it); the traceback only with ``--verbose`` /
    ``HAPO_VERBOSE=1``. Other exceptions are bugs: they propagate with their traceback, printed once."""
    from megatron_hapo import console

    try:
        return fn() or 0
    except HapoError as e:
        if console.verbose():
            traceback.print_exc()
        if logging.getLogger().handlers:  # once set up, this rank's log file keeps it too
            logging.getLogger(prog).error("%s", e, extra=console.FILE_ONLY)
        if console.rank() == 0:
            print(f"{prog}: {e}", file=sys.stderr, flush=True)
        return 1


def train_main(argv: list[str] | None = None) -> None:
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


def eval_main(argv: list[str] | None = None) -> None:
    from megatron_hapo.eval.cli import main

    sys.exit(main(argv))


def convert_main(argv: list[str] | None = None) -> None:
    from megatron_hapo.models.convert import main

    sys.exit(main(argv))
