"""The bundled CPU-demo dataset: reproducible from its generator, small, loadable, and scorable."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from megatron_hapo.data import PromptDataset
from megatron_hapo.rewards import compute_score

DATA = Path(__file__).resolve().parents[2] / "examples" / "data"


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("make_tiny_math", DATA / "make_tiny_math.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_checked_in_files_match_the_generator(gen):
    assert gen.differences(DATA) == []


def test_generator_is_deterministic_and_seeded(gen):
    assert gen.make_rows() == gen.make_rows()
    assert gen.make_rows(seed=1) != gen.make_rows()


def test_bundled_files_are_small():
    files = [p for p in DATA.glob("tiny_math_*") if p.suffix in (".parquet", ".jsonl")]
    assert len(files) == 3 and sum(p.stat().st_size for p in files) < 100_000
    everything = [p for p in DATA.iterdir() if p.suffix in (".parquet", ".jsonl")]
    assert sum(p.stat().st_size for p in everything) < 200_000  # the reasoning task's files too


def test_splits_are_disjoint_and_complete(gen):
    rows = gen.make_rows()
    exprs = {s: {r["extra_info"]["expression"] for r in rows[s]} for s in rows}
    assert len(exprs["train"]) == 260 and len(exprs["val"]) == 40
    assert not exprs["train"] & exprs["val"]


def test_loads_and_the_verifier_scores_its_answers(tokenizer):
    ds = PromptDataset([str(DATA / "tiny_math_train.parquet")], tokenizer, max_prompt_length=96)
    assert len(ds) == 260 and ds.stats.too_long_dropped == 0
    val_pq = PromptDataset([str(DATA / "tiny_math_val.parquet")], tokenizer, max_prompt_length=96)
    val_jsonl = PromptDataset([str(DATA / "tiny_math_val.jsonl")], tokenizer, max_prompt_length=96)
    assert [s.prompt_ids for s in val_pq] == [s.prompt_ids for s in val_jsonl]
    for s in list(ds)[:20] + list(val_pq)[:10]:
        assert "math_dapo" in s.data_source
        right = compute_score(s.data_source, f"Let me think.\nAnswer: {s.ground_truth}", s.ground_truth)
        wrong = compute_score(s.data_source, f"Answer: {int(s.ground_truth) + 1}", s.ground_truth)
        assert (right["score"], right["acc"]) == (1.0, True)
        assert (wrong["score"], wrong["acc"]) == (-1.0, False)
