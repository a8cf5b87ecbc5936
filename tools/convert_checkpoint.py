#!/usr/bin/env python
"""HF <-> Megatron checkpoint conversion; the same as the ``hapo-convert`` console script.

    python tools/convert_checkpoint.py hf-to-mcore --hf DIR --out DIR [--tp N --pp M]
    python tools/convert_checkpoint.py mcore-to-hf --mcore DIR --hf-config DIR --out DIR
    python tools/convert_checkpoint.py verify --hf DIR --mcore DIR [--tp N --pp M]

See docs/conversion.md; the implementation is megatron_hapo/cli/convert.py.
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
    from megatron_hapo.cli.convert import main

    sys.exit(main())
