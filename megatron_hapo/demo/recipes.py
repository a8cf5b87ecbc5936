"""The demo's tasks and the recipe of each task's SFT-warmed policy (``make demo`` and
``tools/run_study.py`` build the same policy from here)."""

from __future__ import annotations

from pathlib import Path

TASKS = {
    # task: (config, training file, model directory, its environment variable)
    "tiny_math": (
        "examples/configs/tiny_cpu.yaml",
        "examples/data/tiny_math_train.parquet",
        "runs/tiny_cpu_model",
        "HAPO_TINY_MODEL",
    ),
    "reasoning": (
        "examples/configs/demo_reasoning.yaml",
        "examples/data/reasoning_train.parquet",
        "runs/demo_reasoning_model",
        "HAPO_DEMO_MODEL",
    ),
}


def policy_recipe(task: str) -> dict:
    """The arguments of ``make_demo_model`` for the demo's policy on ``task`` (the study uses the same)."""
    from megatron_hapo.demo.traces import TraceNoise

    if task == "tiny_math":
        return dict(task="tiny_math", sft_steps=400, sft_noise=0.5)
    if task == "reasoning":
        # measured in docs/reproduction.md ("The reasoning task"): held-out avg@4 about 0.3-0.4 after it
        return dict(
            task="reasoning",
            hidden_size=128,
            num_layers=4,
            sft_steps=1600,
            sft_lr=3e-3,
            sft_batch=32,
            sft_cosine=True,
            sft_warmup=50,
            sft_clip=1.0,
            trace_noise=TraceNoise(skip=0.4, error=0.05, no_answer=0.4),
        )
    raise ValueError(f"demo task must be one of {sorted(TASKS)}, got {task!r}")


def build_policy(model_dir: Path, root: Path = Path("."), task: str = "reasoning") -> Path:
    """The SFT-warmed demo policy for ``task`` in ``model_dir`` (reused when its recipe is unchanged)."""
    from megatron_hapo.demo.policy import make_demo_model

    return make_demo_model(model_dir, sft_files=[str(root / TASKS[task][1])], **policy_recipe(task))
