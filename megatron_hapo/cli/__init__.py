"""Every command-line entry point, one module each.

* ``hapo-train`` (``python -m megatron_hapo.trainer``): :mod:`megatron_hapo.cli.train`
* ``hapo-eval``: :mod:`megatron_hapo.cli.eval`
* ``hapo-convert`` (``tools/convert_checkpoint.py``, ``tools/export_fp8.py``): :mod:`megatron_hapo.cli.convert`
* ``hapo-serve`` (a fleet on nodes of its own): :mod:`megatron_hapo.cli.serve`
* ``python -m megatron_hapo.config``: :mod:`megatron_hapo.cli.config`
* ``python -m megatron_hapo.cli.smoke``: :mod:`megatron_hapo.cli.smoke` (a Megatron smoke run)
* ``python -m megatron_hapo.demo`` (``make demo``): :mod:`megatron_hapo.cli.demo`; the demo's task data and
  policy probe: :mod:`megatron_hapo.cli.demo_task`, :mod:`megatron_hapo.cli.demo_probe`
* ``tools/logprob_doctor.py``: :mod:`megatron_hapo.cli.logprob_doctor` (does SGLang sample from the policy?)

The console scripts of setup.py name :func:`train_main`, :func:`eval_main`, :func:`convert_main` and
:func:`serve_main` here.
"""

from __future__ import annotations

import logging
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
    from megatron_hapo.cli.train import main

    main(argv)


def eval_main(argv: list[str] | None = None) -> None:
    from megatron_hapo.cli.eval import main

    sys.exit(main(argv))


def convert_main(argv: list[str] | None = None) -> None:
    from megatron_hapo.cli.convert import main

    sys.exit(main(argv))


def serve_main(argv: list[str] | None = None) -> None:
    from megatron_hapo.cli.serve import main

    sys.exit(main(argv))
