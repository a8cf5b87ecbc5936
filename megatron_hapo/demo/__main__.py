"""``python -m megatron_hapo.demo`` (``make demo``): the demo command (megatron_hapo/cli/demo.py)."""

import sys

from megatron_hapo.cli.demo import main

if __name__ == "__main__":
    sys.exit(main())
