#!/usr/bin/env python
"""Compare SGLang's behaviour log-probs with the Megatron policy's after a weight sync.

See megatron_hapo/cli/logprob_doctor.py; e.g.
    python tools/logprob_doctor.py --hf /models/Qwen2.5-Math-1.5B
    torchrun --nproc-per-node 2 tools/logprob_doctor.py --hf DIR --mcore MCORE_DIR --tp 2
"""

import sys

if __name__ == "__main__":
    from megatron_hapo.cli.logprob_doctor import main

    sys.exit(main())
