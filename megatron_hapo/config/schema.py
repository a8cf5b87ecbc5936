"""The typed configuration schema: one dataclass per component, composed into :class:`RootConfig`.

Every field carries a one-line ``help`` in its metadata; ``help_config()`` and ``docs/config.md`` are
rendered from it, so the schema is the single source of truth for keys, types, defaults and meanings.
Defaults follow the HAPO paper's recipes (docs/hapo_spec.md §9) wherever one applies.

``MISSING`` (``???``) marks a required value: loading fails if no YAML file or override sets it.
This module imports nothing heavy on purpose (no torch, no megatron): it is imported by the CLI's
``--help-config`` and by every component that reads a section.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, is_dataclass
from typing import Any, Literal

from omegaconf import MISSING

from megatron_hapo.algorithms.loss_config import HapoLossConfig  # the loss owns its settings (torch-free)

__all__ = [
    "MISSING",
    "AdaptiveTemperatureConfig",
    "AlgorithmConfig",
    "CheckpointConfig",
    "ClusterConfig",
    "DataConfig",
    "DynamicSamplingConfig",
    "EvalConfig",
    "LoggingConfig",
    "HapoLossConfig",
    "ModelConfig",
    "OptimConfig",
    "OverlongConfig",
    "ParallelConfig",
    "PrecisionConfig",
    "RewardConfig",
    "RolloutConfig",
    "RootConfig",
    "SamplingConfig",
    "SamplingParams",
    "TrainerConfig",
]


def opt(default: Any, help: str) -> Any:  # noqa: A002 - "help" reads best at the call sites
    """A schema field with a default and its one-line help (mutable defaults are copied per instance)."""
    if isinstance(default, list | dict) or is_dataclass(default):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def section(cls: type, help: str) -> Any:  # noqa: A002
    """A nested section field."""
    return field(default_factory=cls, metadata={"help": help})


# SGLang mem_fraction_static when rollout.mem_fraction is null: fleet servers / the in-process engine
FLEET_MEM_FRACTION = 0.85
INPROCESS_MEM_FRACTION = 0.3

# Truncated-importance-sampling cap turned on by rollout.quantization=fp8 when algorithm.loss.tis_cap is null
# (C = 2 as in verl's TIS / rollout-correction defaults; docs/fp8.md).
FP8_ROLLOUT_DEFAULT_TIS_CAP = 2.0

# --------------------------------------------------------------------------------------------------- model


@dataclass
class ModelConfig:
    """The policy model: where its HF config/weights/tokenizer live and how Megatron builds it."""

    hf_path: str = opt(
        MISSING,
        "HF model dir (config.json, tokenizer, weights) or hub id; a dir with only config.json + tokenizer "
        "and load_weights=false builds a tiny random model (CPU demo)",
    )
    tokenizer_path: str | None = opt(None, "tokenizer directory or hub id; null = same as hf_path")
    load_weights: bool = opt(True, "load the HF weights from hf_path; false = random init from config.json")
    override_config: dict[str, Any] = opt(
        {}, "HF config fields to override before building, e.g. {max_position_embeddings: 32768}"
    )
    dtype: Literal["bfloat16", "float16", "float32"] = opt(
        "bfloat16", "dtype of the HF weights as loaded, exported and served by the rollout engine"
    )
    layer_spec: Literal["auto", "local", "te"] = opt(
        "auto", "Megatron layer spec: te (Transformer Engine), local (pure torch), auto = te if TE imports"
    )
    local_attention: Literal["auto", "sdpa", "unfused"] = opt(
        "auto",
        "core attention of the local spec: sdpa (torch's fused flash / memory-efficient kernels, no s x s "
        "scores kept), unfused (Megatron's DotProductAttention: scores kept, softmax in fp32); auto = sdpa "
        "on CUDA, unfused on CPU. TE's spec has its own fused attention (leave auto)",
    )
    recompute_granularity: Literal["none", "selective", "full"] = opt(
        "full", "activation recomputation (HAPO recipes use gradient checkpointing = full)"
    )
    recompute_method: Literal["uniform", "block"] = opt("uniform", "how full recompute splits the layers")
    recompute_num_layers: int = opt(1, "layers per recompute chunk (uniform) or recomputed layers (block)")
    make_vocab_size_divisible_by: int = opt(128, "pad the vocabulary to a multiple of this x TP")


# ------------------------------------------------------------------------------------------------ parallel


def sequence_multiple(tp: int, sequence_parallel: bool, cp: int) -> int:
    """What a micro-batch's padded length s must divide by. Sequence parallelism splits a rank's sequence over
    the TP ranks; context parallelism cuts s into 2 x CP chunks (Megatron's load-balanced layout), of which a
    rank holds s / CP tokens. So s divides by TP, by 2 x CP, and under both by CP x lcm(2, TP)."""
    m = tp if sequence_parallel else 1
    return cp * math.lcm(2, m) if cp > 1 else m


@dataclass
class ParallelConfig:
    """Megatron's training layout. TP x PP x CP x DP must equal the world size."""

    tensor_model_parallel_size: int = opt(1, "tensor-parallel size (TP)")
    pipeline_model_parallel_size: int = opt(1, "pipeline-parallel size (PP)")
    context_parallel_size: int = opt(
        1,
        "context-parallel size (CP): every sequence split over CP ranks (Megatron's load-balanced 2 x CP chunks; "
        "SDPA or TE attention, no THD packing, stats_scope=step, a token-linear loss aggregation)",
    )
    data_parallel_size: int | None = opt(None, "data-parallel size (DP); null = world_size / (TP x PP x CP)")
    virtual_pipeline_model_parallel_size: int | None = opt(
        None,
        "interleaved pipeline: model chunks per pipeline rank (>= 2, needs PP > 1 and layers divisible by "
        "PP x VP; fewer pipeline bubbles for more point-to-point traffic); null = one chunk per rank",
    )
    expert_model_parallel_size: int = opt(
        1,
        "expert-parallel size (EP) of a mixture of experts: each rank holds num_experts / EP experts, tokens "
        "travel to their experts' ranks (all-to-all); carved out of DP x CP, which it must divide",
    )
    sequence_parallel: bool = opt(False, "Megatron sequence parallelism (needs TP > 1)")
    use_distributed_optimizer: bool = opt(True, "shard optimizer state across data-parallel ranks")

    @property
    def sequence_multiple(self) -> int:
        """What every micro-batch's padded length must divide by (:func:`sequence_multiple`)."""
        return sequence_multiple(
            self.tensor_model_parallel_size, self.sequence_parallel, self.context_parallel_size
        )

    @property
    def micro_batch_multiple(self) -> int:
        """What every rank's micro-batch count per schedule call must divide by: PP under an interleaved
        pipeline (Megatron's interleaved schedule runs micro-batches in groups of PP per model chunk), else 1."""
        return self.pipeline_model_parallel_size if self.virtual_pipeline_model_parallel_size else 1


# ----------------------------------------------------------------------------------------------- precision


@dataclass
class PrecisionConfig:
    """Training precision. FP8 needs Transformer Engine and an FP8-capable GPU: never a silent bf16 run."""

    dtype: Literal["bf16", "fp16", "fp32"] = opt(
        "bf16", "training compute/parameter dtype (fp32 master weights)"
    )
    fp8: Literal["e4m3", "hybrid"] | None = opt(None, "FP8 GEMMs via Transformer Engine; null = off")
    fp8_recipe: Literal["delayed", "tensorwise", "blockwise"] = opt(
        "blockwise", "TE scaling recipe; blockwise needs Hopper (sm90) and CUDA >= 12.9"
    )
    fp8_param: bool = opt(False, "keep parameters in FP8 (needs fp8 set)")
    first_last_layers_bf16: bool = opt(
        False, "keep the first/last layers in bf16 (not with fp8_recipe=delayed)"
    )
    num_layers_at_start_in_bf16: int = opt(1, "layers at the start kept in bf16 when first_last_layers_bf16")
    num_layers_at_end_in_bf16: int = opt(1, "layers at the end kept in bf16 when first_last_layers_bf16")


# --------------------------------------------------------------------------------------------------- optim


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule (HAPO recipes: lr 1e-6, wd 0.1, 10 warmup steps, constant)."""

    lr: float = opt(1.0e-6, "peak learning rate")
    min_lr: float = opt(0.0, "final learning rate of a decaying schedule")
    weight_decay: float = opt(0.1, "AdamW decoupled weight decay")
    betas: tuple[float, float] = opt((0.9, 0.999), "Adam (beta1, beta2)")
    eps: float = opt(1.0e-8, "Adam epsilon")
    clip_grad: float = opt(1.0, "global gradient-norm clip; 0 = off")
    warmup_steps: int = opt(10, "linear warmup, in optimizer steps")
    schedule: Literal["constant", "cosine", "linear"] = opt("constant", "learning-rate shape after warmup")
    decay_steps: int | None = opt(None, "optimizer steps of a cosine/linear decay; null = until the run ends")


# ------------------------------------------------------------------------------------------------- rollout


@dataclass
class RolloutConfig:
    """The SGLang rollout engine: in-process (colocated with training) or an external fleet."""

    engine: Literal["inprocess", "fleet"] = opt(
        "inprocess", "inprocess = SGLang engine inside the training job; fleet = external servers/router"
    )
    num_servers: int = opt(1, "fleet: number of SGLang servers")
    tensor_parallel_size: int = opt(1, "TP size of each SGLang server/engine")
    gpus_per_server: int | None = opt(None, "GPUs per SGLang server; null = tensor_parallel_size")
    server_addresses: list[str] = opt([], "fleet: http://host:port of each SGLang server")
    router_address: str | None = opt(None, "fleet: http://host:port of an sglang-router in front of them")
    launch_servers: bool = opt(
        False, "fleet: the trainer's lead rank launches num_servers SGLang servers + a router on its node"
    )
    weight_sync: Literal["distributed", "disk"] = opt(
        "distributed", "fleet: weight sync by broadcast to every server rank, or an HF checkpoint reloaded"
    )
    on_server_failure: Literal["continue", "fail"] = opt(
        "continue",
        "fleet: a dead server is dropped (continue on the others; the distributed sync group is rebuilt "
        "without it) or stops the run with an error (fail); docs/rollout.md",
    )
    sync_timeout_s: float = opt(
        300.0,
        "fleet, distributed sync: bound on one broadcast and on each server's reply (finds a dead server)",
    )
    sync_address: str = opt(
        "127.0.0.1",
        "fleet, distributed sync: the trainer's address as the servers see it (its rendezvous store listens "
        "there); another node's servers need this node's address",
    )
    bind_host: str = opt(
        "127.0.0.1",
        "fleet, launched servers and router (and its metrics exporter) listen here; a non-loopback address "
        "opens them to other machines (docs/security.md)",
    )
    api_key_env: str = opt(
        "HAPO_ROLLOUT_API_KEY",
        "environment variable holding the API key of attached servers (never stored in the config); "
        "launched servers get a fresh per-run key",
    )
    mem_fraction: float | None = opt(
        None,
        "SGLang mem_fraction_static, the share of each of its GPUs an engine takes for weights + KV cache; "
        "null = 0.85 for fleet servers (GPUs of their own), 0.3 for the in-process engine, which shares its "
        "GPUs with training ranks (at most 0.5; for development and small models; docs/rollout.md)",
    )
    server_args: dict[str, Any] = opt(
        {},
        "more SGLang ServerArgs fields for the in-process engine and launched servers, e.g. "
        "{chunked_prefill_size: 8192, ep_size: 8}; names, types and choices are checked against SGLang's own "
        "declaration, and the fields this project sets (model, dtype, TP size, memory share, seed, ports, "
        "sampler) are refused, naming the key that sets them; attached servers take theirs on their own command "
        "line (docs/rollout.md)",
    )
    sync_policy: Literal["wait", "pause", "abort"] = opt(
        "wait",
        "requests in flight during a weight sync: wait = they finish first (each sample has one weight "
        "version), pause = retracted and continued on the new weights, abort = aborted and resubmitted after "
        "the sync; none is lost; pause and abort need rollout.engine=fleet (docs/rollout.md)",
    )
    quantization: Literal["fp8"] | None = opt(
        None,
        "SGLang serving precision: fp8 = online FP8 (weights re-quantised on every sync; TIS on, "
        "see docs/fp8.md); null = the checkpoint's dtype",
    )
    fp8_format: Literal["blockwise", "flashrl"] = opt(
        "blockwise",
        "rollout.quantization=fp8: blockwise = 128x128 block scales, the trainer quantises every sync on the way "
        "and SGLang serves an FP8 copy of the checkpoint; flashrl = SGLang's FlashRL loader re-quantises bf16 "
        "syncs per channel (both Qwen2/Qwen3 only in SGLang 0.5.23; docs/fp8.md)",
    )
    seeded_sampling: bool = opt(
        False,
        "seed every response (from trainer.seed and its prompt's position in the run; an evaluation's from "
        "trainer.seed, its benchmark and its prompt's position): rollouts and evaluations depend only on the "
        "weights, so a resumed run repeats the uninterrupted one on CPU, and every evaluation draws the same "
        "way for the same prompt; uses SGLang's torch sampling kernels (slower than flashinfer on GPU)",
    )
    max_staleness: int = opt(
        0,
        "0 = on-policy: every step generates, then trains; 1 = the next step's responses generate (one "
        "weight version behind) while this step trains; fleet only (docs/rollout.md, Overlap)",
    )
    max_new_tokens: int = opt(10240, "maximum response length in tokens (HAPO: 10240 Qwen2.5, 12288 Qwen3)")
    stop: list[str] = opt([], "extra stop strings (EOS always stops)")
    request_timeout_s: float = opt(3600.0, "timeout of one generate request, seconds")
    startup_timeout_s: float = opt(900.0, "time allowed for engines/servers to become healthy, seconds")
    max_retries: int = opt(3, "retries of a failed request before the step fails")


# ------------------------------------------------------------------------------------------------ sampling


@dataclass
class SamplingParams:
    """Sampling parameters of one kind of generation (training rollouts or validation)."""

    temperature: float = opt(1.0, "base sampling temperature")
    top_p: float = opt(1.0, "nucleus sampling threshold; 1.0 = off")
    top_k: int = opt(-1, "top-k truncation; -1 = off")
    n: int = opt(16, "samples per prompt (group size G; for validation the k of avg@k)")


@dataclass
class SamplingConfig:
    """Sampling for training rollouts and for validation/evaluation (HAPO: val T 0.5, top-p 0.7, n 8)."""

    train: SamplingParams = section(SamplingParams, "training rollouts")
    val: SamplingParams = opt(
        SamplingParams(temperature=0.5, top_p=0.7, top_k=-1, n=8), "validation/evaluation (avg@n)"
    )


# ----------------------------------------------------------------------------------------------- algorithm


@dataclass
class AdaptiveTemperatureConfig:
    """Entropy-adaptive sampling temperature T = T_base (1 + tau * h_hat) (HAPO §3)."""

    enable: bool = opt(True, "sample with the entropy-adaptive temperature")
    tau: float = opt(0.05, "tau: relative temperature swing (lower it if training collapses)")


@dataclass
class DynamicSamplingConfig:
    """DAPO dynamic sampling: drop groups whose accuracy is all-equal and generate more to refill."""

    enable: bool = opt(
        False,
        "filter groups whose binary accuracy (never the shaped score) is all-equal (off in the released HAPO "
        "code, HAPO_SPEC B10)",
    )
    max_num_gen_batches: int = opt(
        16,
        "generation batches tried per step before the step fails (over-sampling: prompts submitted, in "
        "units of train_batch_size); 0 = unlimited",
    )
    over_sample: float = opt(
        1.0,
        "1 = refill with whole extra batches; f > 1 = submit f x the missing groups at once, keep the mixed "
        "ones as they complete, abort the rest (fleet only; start at 1.1: docs/rollout.md, Over-sampling)",
    )


@dataclass
class AlgorithmConfig:
    """The RL algorithm: advantage estimator, temperature handling, dynamic sampling and the loss."""

    name: Literal["hapo", "dapo", "grpo"] = opt("hapo", "algorithm label (recipes set the matching switches)")
    adv_estimator: Literal["tlga", "grpo"] = opt("tlga", "advantage: token-level group average or GRPO")
    norm_adv_by_std: bool = opt(True, "divide advantages by the group std")
    tlga_fallback_threshold: float | None = opt(
        5.0, "TLGA falls back to GRPO for a group with any |A| >= this; null = never"
    )
    tlga_fallback_counts_padding: bool = opt(
        False, "include padded positions in the fallback check (the released code does, HAPO_SPEC B8)"
    )
    ratio_temperature: Literal["per_token", "base"] = opt(
        "per_token",
        "log-probs for the ratio at each token's sampling temperature, or at the base T (released)",
    )
    adaptive_temperature: AdaptiveTemperatureConfig = section(
        AdaptiveTemperatureConfig, "adaptive temperature"
    )
    dynamic_sampling: DynamicSamplingConfig = section(DynamicSamplingConfig, "dynamic sampling")
    rollout_routing_replay: bool = opt(
        False,
        "mixture of experts: rollout routing replay (R3): SGLang returns the experts it routed every token to, "
        "and the trainer's routers take those experts in the old-policy pass and the update, so the trainer "
        "scores what the engine sampled; adds num_layers x top_k bytes per token to the step's data "
        "(docs/training.md)",
    )
    policy_loss: Literal["hapo"] = opt(
        "hapo", "policy loss, by its name in the policy-loss registry (algorithms/registry.py)"
    )
    loss: HapoLossConfig = section(HapoLossConfig, "policy loss (megatron_hapo/algorithms/loss_config.py)")


# -------------------------------------------------------------------------------------------------- reward


@dataclass
class OverlongConfig:
    """DAPO overlong shaping: r += min(-(L - (L_max - B)) / B * f, 0) with L_max = rollout.max_new_tokens."""

    enable: bool = opt(True, "apply the overlong penalty (HAPO's Qwen recipes: on; Llama: off)")
    buffer_len: int = opt(4096, "B: length of the penalty ramp before max_new_tokens, tokens")
    penalty_factor: float = opt(1.0, "f: penalty at the maximum length")


@dataclass
class RewardConfig:
    """Reward scoring: verifiers in a process pool, routed by data_source, plus overlong shaping."""

    scorer: str = opt(
        "auto", "auto = route by data_source ('math_dapo' in it -> dapo, else math_verify); or a scorer name"
    )
    num_workers: int = opt(8, "scoring worker processes")
    start_method: Literal["spawn", "forkserver", "fork"] = opt(
        "spawn", "how workers start; spawn/forkserver are safe when the trainer holds CUDA/NCCL state"
    )
    verify_timeout_s: int = opt(1, "math-verify's own parse/verify timeout (SIGALRM, whole seconds)")
    call_timeout_s: float = opt(5.0, "deadline per answer, measured from the start of its work, seconds")
    kill_grace_s: float = opt(2.0, "a worker still busy this long after the deadline is killed and replaced")
    extra_modules: list[str] = opt([], "modules each worker imports (to register custom scorers)")
    overlong: OverlongConfig = section(OverlongConfig, "overlong reward shaping")


# ---------------------------------------------------------------------------------------------------- data


@dataclass
class DataConfig:
    """Prompt datasets (parquet in the verl/HAPO schema, or JSONL) and the batch sizes of a step."""

    train_files: list[str] = opt(MISSING, "training prompt files (.parquet, .jsonl)")
    prompt_key: str = opt("prompt", "column with the chat message list (or a plain string = one user turn)")
    data_source_key: str = opt("data_source", "column naming the dataset, used to route the reward scorer")
    ground_truth_key: str = opt("reward_model.ground_truth", "dotted path of the reference answer")
    extra_info_key: str = opt(
        "extra_info", "column with per-row extra info passed to the scorer; may be absent"
    )
    default_data_source: str | None = opt(None, "data_source for files without that column; null = required")
    apply_chat_template: bool = opt(True, "render prompts with the tokenizer's chat template")
    max_prompt_length: int = opt(1024, "maximum prompt length in tokens")
    truncation: Literal["drop", "left", "error"] = opt(
        "drop", "prompts over max_prompt_length: drop them, keep their last tokens, or fail (all counted)"
    )
    bad_rows: Literal["error", "skip"] = opt(
        "error",
        "rows with a malformed prompt or missing ground truth: fail naming the row, or skip and count",
    )
    dedup: bool = opt(
        False, "drop repeated prompts, keeping the first (DAPO-Math-17k ships ~100x duplicates)"
    )
    shuffle: bool = opt(True, "shuffle every epoch (deterministic from seed and epoch)")
    seed: int = opt(42, "shuffling seed")
    drop_last: bool = opt(True, "skip the incomplete last batch of an epoch")
    train_batch_size: int = opt(512, "prompts per RL step (global)")
    mini_batch_size: int = opt(
        32, "prompts per optimizer step (global); train_batch_size / this = updates per step"
    )
    micro_batch_size: int = opt(
        1,
        "responses per micro-batch per data-parallel rank (fixed micro-batches: max_tokens_per_micro_batch null)",
    )
    max_tokens_per_micro_batch: int | None = opt(
        None,
        "token budget of an update micro-batch (rows x padded length, per DP rank): responses are spread over "
        "DP ranks by tokens and grouped first-fit-decreasing under it, each micro-batch padded to its own "
        "longest sequence; must be >= max_prompt_length + rollout.max_new_tokens. null = fixed "
        "micro_batch_size responses per micro-batch (docs/training.md, 'Micro-batches')",
    )
    max_tokens_per_old_micro_batch: int | None = opt(
        None,
        "token budget of an old-policy-pass micro-batch (forward only, no activations kept: can be larger "
        "than max_tokens_per_micro_batch); null = max_tokens_per_micro_batch",
    )
    sequence_packing: Literal["auto", "none", "mask", "thd"] = opt(
        "auto",
        "several responses per row (one row per micro-batch, up to max_tokens_per_micro_batch tokens), each "
        "with its own positions, attention never crossing sequences: mask = block-diagonal causal mask + "
        "per-sequence rotary positions (Megatron's local attention), thd = PackedSeqParams with Transformer "
        "Engine's attention, none = token-budget micro-batches; auto = mask with the local layer spec, none "
        "with TE (thd not yet proven on a GPU) and none without a token budget (docs/training.md, "
        "'Sequence packing')",
    )


# ------------------------------------------------------------------------------------------------- trainer


@dataclass
class TrainerConfig:
    """The training loop."""

    experiment_name: str = opt("hapo", "run name, used in run_dir")
    run_dir: str = opt(
        "runs/${trainer.experiment_name}", "directory for the resolved config, metrics, checkpoints"
    )
    total_epochs: int = opt(
        1,
        "sets the run's length to total_epochs x steps per epoch when total_steps is null (one pass, unless "
        "dynamic sampling draws extra batches for a step: then set total_steps)",
    )
    total_steps: int | None = opt(None, "RL steps to run; null = total_epochs x steps per epoch")
    seed: int = opt(42, "global random seed")
    device: Literal["auto", "cuda", "cpu"] = opt("auto", "auto = cuda when available, else cpu (gloo)")
    collective_timeout_minutes: float = opt(
        10.0,
        "timeout of the default process group's collectives (NCCL on GPU: its watchdog ends the job): the "
        "compute collectives, which never wait for rank 0's own work (Megatron's --distributed-timeout-minutes)",
    )
    lead_timeout_minutes: float = opt(
        720.0,
        "how long the other ranks wait for rank 0's own work: engine start, checkpoint verification, rollout "
        "and scoring (all rounds of dynamic sampling), evaluation, checkpoint bookkeeping (a gloo group of its "
        "own: docs/training.md, 'Waiting for rank 0')",
    )


# ---------------------------------------------------------------------------------------------- checkpoint


@dataclass
class CheckpointConfig:
    """Distributed checkpoints (model, optimizer, LR schedule, data position, loop state) under the run directory."""

    dir: str = opt("${trainer.run_dir}/checkpoints", "checkpoint directory")
    save_every: int = opt(50, "save every N steps; 0 = only at the end")
    keep_last: int | None = opt(3, "keep the newest N checkpoints; null = keep all")
    resume: str = opt(
        "auto",
        "auto = the newest checkpoint in dir whose manifest verifies (bad ones are named and skipped); "
        "none = start fresh (refused on a run_dir that already holds a run); or a checkpoint path",
    )
    hf_export: bool = opt(
        False,
        "also write the policy as a Hugging Face folder (step_<N>/hf: safetensors + config + tokenizer)",
    )


# ------------------------------------------------------------------------------------------------- logging


@dataclass
class LoggingConfig:
    """Metrics and console output."""

    jsonl: bool = opt(True, "write metrics to <run_dir>/metrics.jsonl")
    tensorboard: bool = opt(True, "write TensorBoard events to <run_dir>/tensorboard")
    stdout_every: int = opt(1, "print a metrics line every N steps; 0 = never")
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = opt("INFO", "Python logging level")
    plots: bool = opt(True, "draw <run_dir>/plots/metrics.png at the end of the run (needs matplotlib)")
    wandb: bool = opt(
        False, "also log to Weights & Biases (needs the wandb package; WANDB_MODE=offline works)"
    )
    wandb_project: str = opt("megatron-hapo", "wandb project; the run is named trainer.experiment_name")


# ---------------------------------------------------------------------------------------------------- eval


@dataclass
class EvalConfig:
    """Periodic avg@k evaluation with sampling.val (k = sampling.val.n)."""

    benchmarks: list[str] = opt(
        [], "benchmark files (.parquet/.jsonl, prompt schema as data); name = file stem"
    )
    every: int = opt(5, "evaluate every N steps and after the last; 0 = never (HAPO: 5)")
    before_train: bool = opt(True, "evaluate once before the first step")
    max_new_tokens: int | None = opt(None, "response limit for evaluation; null = rollout.max_new_tokens")
    max_prompts: int | None = opt(None, "evaluate only the first N prompts of each benchmark; null = all")


# ------------------------------------------------------------------------------------------------- cluster


@dataclass
class ClusterConfig:
    """The machines, for validating layouts before launch (dry runs); torchrun's WORLD_SIZE wins at run time."""

    nodes: int = opt(1, "number of nodes")
    gpus_per_node: int = opt(8, "GPUs (or CPU processes) per node")


# ---------------------------------------------------------------------------------------------------- root


@dataclass
class RootConfig:
    """The whole configuration of a run."""

    model: ModelConfig = section(ModelConfig, "policy model")
    parallel: ParallelConfig = section(ParallelConfig, "training parallel layout")
    precision: PrecisionConfig = section(PrecisionConfig, "training precision and FP8")
    optim: OptimConfig = section(OptimConfig, "optimizer and LR schedule")
    rollout: RolloutConfig = section(RolloutConfig, "rollout engine")
    sampling: SamplingConfig = section(SamplingConfig, "sampling parameters")
    algorithm: AlgorithmConfig = section(AlgorithmConfig, "RL algorithm and loss")
    reward: RewardConfig = section(RewardConfig, "reward scoring")
    data: DataConfig = section(DataConfig, "prompt data and batch sizes")
    trainer: TrainerConfig = section(TrainerConfig, "training loop")
    checkpoint: CheckpointConfig = section(CheckpointConfig, "checkpointing")
    logging: LoggingConfig = section(LoggingConfig, "logging")
    eval: EvalConfig = section(EvalConfig, "evaluation")
    cluster: ClusterConfig = section(ClusterConfig, "cluster shape for dry-run validation")

    def __post_init__(self) -> None:
        # FP8 rollout makes pi_rollout differ from the bf16 trainer's pi_old by design; without the TIS
        # correction that mismatch biases the gradient, so FP8 rollout turns TIS on (docs/fp8.md). A cap
        # set explicitly is kept; tis_cap cannot be null together with rollout.quantization=fp8.
        if self.rollout.quantization == "fp8" and self.algorithm.loss.tis_cap is None:
            self.algorithm.loss.tis_cap = FP8_ROLLOUT_DEFAULT_TIS_CAP
        # a fleet server has its GPUs to itself; the in-process engine shares each of its GPUs with a
        # training rank (weights, gradients, optimizer state, activations), so it takes a small share
        if self.rollout.mem_fraction is None:
            self.rollout.mem_fraction = (
                INPROCESS_MEM_FRACTION if self.rollout.engine == "inprocess" else FLEET_MEM_FRACTION
            )
