"""Packaging entry point for megatron-hapo.

On a CPU development machine do not `pip install .` directly: `make test` / `make demo` run
tools/bootstrap_env.sh, which installs torch, megatron-core and sglang in the only order that works
there (docs/install.md). On a GPU cluster (NGC PyTorch container, Python 3.12):
`pip install -e ".[gpu,sglang]"`. No extra ever pins torch.
"""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="megatron-hapo",
    version="0.1.0",
    description="HAPO (entropy-adaptive, token-aware policy optimization) RL post-training on Megatron-Core + SGLang",
    long_description=(Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["megatron_hapo", "megatron_hapo.*", "sglang_ext", "sglang_ext.*"]),
    include_package_data=True,
    package_data={"megatron_hapo.config": ["presets/*.yaml"], "megatron_hapo.ops": ["*.c"]},
    install_requires=[
        "torch>=2.6",  # a range, never a pin: the environment decides which build
        "megatron-core==0.19.2",
        "transformers>=5.14",
        "safetensors",
        "omegaconf>=2.4",  # 2.4 validates Literal[...] annotations
        "math-verify==0.9.0",
        "pyarrow",
        "pyyaml",
        "tensorboard",
        "tqdm",
        "psutil",
        "einops",
    ],
    extras_require={
        # rollout engine + our sampler plugin; sglang pins its own CUDA torch, install it in a CUDA env
        "sglang": ["sglang==0.5.23", "sglang-router==0.3.2"],
        # Transformer Engine for FP8 and the TE layer spec (CUDA only; never on a CPU machine)
        "gpu": ["transformer-engine[pytorch]>=2.8"],
        # FP8 serving export (modelopt 0.47 forgets to declare requests)
        "quant": ["nvidia-modelopt==0.47.0", "requests"],
        "dev": ["pytest", "pytest-timeout", "ruff", "matplotlib"],
    },
    entry_points={
        "console_scripts": [
            "hapo-train=megatron_hapo.cli:train_main",
            "hapo-eval=megatron_hapo.cli:eval_main",
            "hapo-convert=megatron_hapo.cli:convert_main",
            "hapo-serve=megatron_hapo.cli:serve_main",
        ],
        # SGLang discovers plugins through this group in every process (schedulers too); the sampler
        # takes effect with HAPO_SGLANG_SAMPLER=1 or --sampling-backend hapo (docs/sampler.md).
        "sglang.srt.plugins": ["hapo_adaptive_temperature = sglang_ext:register"],
    },
)
