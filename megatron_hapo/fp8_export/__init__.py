"""FP8 serving export of a trained HF checkpoint, for SGLang rollout servers (docs/fp8.md).

* ``modelopt`` - NVIDIA ModelOpt per-tensor FP8 (SGLang ``quantization="modelopt"``)
* ``blockwise`` - 128x128 blockwise FP8 (the checkpoint FP8 rollout servers start from)
"""
