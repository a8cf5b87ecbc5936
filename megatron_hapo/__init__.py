"""megatron-hapo: HAPO RL post-training on Megatron-Core with SGLang rollouts.

Kept import-light on purpose: importing the package must not import megatron or sglang.
"""

__version__ = "0.1.0"
