"""``python -m megatron_hapo.config``: key reference, docs generation, and config dry runs.

python -m megatron_hapo.config --help-config            # every key, default, meaning
python -m megatron_hapo.config --update-doc docs/config.md
python -m megatron_hapo.config CONFIG.yaml [key=value ...] [--world-size N] [--no-env-check]
    # load + validate, print the resolved YAML; exit 2 with the problems listed if invalid
python -m megatron_hapo.config CONFIG.yaml --plan cluster.nodes=4 cluster.gpus_per_node=8
    # dry run against the declared cluster: layout, memory per GPU, tokens per step (no GPU needed)
"""

from __future__ import annotations

import argparse
import sys

from megatron_hapo.config import ConfigError, help_config, load_config, to_yaml
from megatron_hapo.config.reference import render_markdown, update_doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m megatron_hapo.config", description=__doc__.splitlines()[0]
    )
    parser.add_argument("config", nargs="?", help="YAML config to load and validate")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    parser.add_argument("--help-config", action="store_true", help="list every key with default and meaning")
    parser.add_argument("--markdown", action="store_true", help="print the key reference as Markdown")
    parser.add_argument(
        "--update-doc", metavar="MD", help="rewrite the generated block of this Markdown file"
    )
    parser.add_argument("--world-size", type=int, default=None, help="validate against this world size")
    parser.add_argument("--no-env-check", action="store_true", help="skip TE/GPU/path/model-file checks")
    parser.add_argument("--plan", action="store_true", help="dry run: layout and memory plan on cluster.*")
    args = parser.parse_intermixed_args(argv)
    if args.help_config:
        sys.stdout.write(help_config())
        return 0
    if args.markdown:
        sys.stdout.write(render_markdown())
        return 0
    if args.update_doc:
        changed = update_doc(args.update_doc)
        print(f"{args.update_doc}: {'updated' if changed else 'already up to date'}")
        return 0
    if not args.config:
        parser.print_usage()
        return 2
    if args.plan:
        from megatron_hapo.config.plan import dry_run

        try:
            print(dry_run(args.config, args.overrides))
        except (ConfigError, ValueError) as e:
            print(e, file=sys.stderr)
            return 2
        return 0
    try:
        cfg = load_config(args.config, args.overrides, args.world_size, check_env=not args.no_env_check)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    sys.stdout.write(to_yaml(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
