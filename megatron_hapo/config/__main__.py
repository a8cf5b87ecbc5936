"""``python -m megatron_hapo.config``: the config command (megatron_hapo/cli/config.py)."""

import sys

from megatron_hapo.cli.config import main

if __name__ == "__main__":
    sys.exit(main())
