#!/usr/bin/env python
"""FP8 serving export with NVIDIA ModelOpt; the same as ``hapo-convert export-fp8``.

    python tools/export_fp8.py --hf DIR --out DIR [--calib-file prompts.jsonl] [--calib-samples 128]
        [--max-seq-len 512] [--dtype auto|bfloat16|float32] [--device cuda|cpu]

Writes an FP8 per-tensor HF folder (float8_e4m3fn weights + weight_scale/input_scale, hf_quant_config.json)
that SGLang serves with ``--quantization modelopt`` (auto-detected). See docs/fp8.md; the implementation is
megatron_hapo/fp8_export/modelopt.py.
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
    from megatron_hapo.cli.convert import main

    sys.exit(main(["export-fp8", *sys.argv[1:]]))
