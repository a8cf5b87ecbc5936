"""Console scripts: hapo-train, hapo-eval, hapo-convert."""

from __future__ import annotations

import sys

_NOT_YET = (
    "{name}: not yet available in this version ({what} lands with the issue '{issue}'). "
    "`make demo` runs the Megatron-Core CPU smoke run."
)


def train_main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "--help-config" in argv:
        from megatron_hapo.config import help_config

        print(help_config())
        return
    sys.exit(_NOT_YET.format(name="hapo-train", what="the HAPO trainer", issue="The trainer"))


def eval_main(argv: list[str] | None = None) -> None:
    from megatron_hapo.eval.cli import main

    sys.exit(main(argv))


def convert_main(argv: list[str] | None = None) -> None:
    from megatron_hapo.models.convert import main

    sys.exit(main(argv))
