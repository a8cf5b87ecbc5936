"""Evaluation: avg@k and pass@k over benchmark files, against any rollout engine (in-process SGLang or
a fleet). ``hapo-eval`` is the command line; :class:`Evaluator` is the trainer's periodic hook.

    result = evaluate(engine, tokenizer, {"AIME24": "aime24.parquet"}, k=8, temperature=0.5, top_p=0.7,
                      scorer=ScorerPool(4))
    print(result.table()); result.to_json("results.json")

Metric definitions: :mod:`megatron_hapo.eval.metrics`. See docs/evaluation.md.
"""

from megatron_hapo.eval.benchmarks import Benchmark, benchmark_names, load_benchmarks
from megatron_hapo.eval.metrics import BenchmarkMetrics, SampleOutcome, benchmark_metrics, pass_at_k
from megatron_hapo.eval.periodic import EvalHistory, Evaluator, drop_journals_after, initial_weights
from megatron_hapo.eval.runner import EvalResult, EvalSettings, evaluate, score_answers

__all__ = [
    "Benchmark",
    "BenchmarkMetrics",
    "EvalHistory",
    "EvalResult",
    "EvalSettings",
    "Evaluator",
    "SampleOutcome",
    "benchmark_metrics",
    "benchmark_names",
    "drop_journals_after",
    "evaluate",
    "initial_weights",
    "load_benchmarks",
    "pass_at_k",
    "score_answers",
]
