"""PromptDataset: both formats, chat template, length limits, dedup, bad rows; all counted."""

from __future__ import annotations

import logging

import pytest

from megatron_hapo.config import DataConfig
from megatron_hapo.data import DataError, PromptDataset, RowKeys

from .conftest import row, write_jsonl, write_parquet


def make(files, tokenizer, **kw):
    kw.setdefault("max_prompt_length", 256)
    return PromptDataset([str(f) for f in files], tokenizer, **kw)


def test_parquet_and_jsonl_give_the_same_samples(tmp_path, tokenizer):
    rows = [row(f"What is {i} + 1?", gt=str(i + 1), extra={"index": i}) for i in range(5)]
    a = make([write_parquet(tmp_path / "a.parquet", rows)], tokenizer)
    b = make([write_jsonl(tmp_path / "a.jsonl", rows)], tokenizer)
    assert len(a) == len(b) == 5
    for x, y in zip(a, b, strict=True):
        assert (x.prompt_ids, x.data_source, x.ground_truth, x.extra_info) == (
            y.prompt_ids,
            y.data_source,
            y.ground_truth,
            y.extra_info,
        )
    s = a[3]
    assert (
        s.index == 3
        and s.ground_truth == "4"
        and s.extra_info == {"index": 3}
        and s.data_source == "math_dapo"
    )
    assert s.source.endswith("a.parquet row 3")


def test_a_json_array_and_a_byte_order_mark_read_as_jsonl_does(tmp_path, tokenizer):
    """A .json file holding one array of records (pretty-printed, as pandas' to_json(orient="records") or
    json.dump write it) and a .jsonl file that starts with a UTF-8 byte-order mark give the JSONL file's samples
    (the array was refused as "a row must be a JSON object", the marked first row dropped as invalid JSON)."""
    import codecs
    import json

    rows = [row(f"What is {i} + 1?", gt=str(i + 1), extra={"index": i}) for i in range(3)]
    plain = make([write_jsonl(tmp_path / "a.jsonl", rows)], tokenizer)
    array = tmp_path / "a.json"
    array.write_text("\n  " + json.dumps(rows, indent=2), encoding="utf-8")
    marked = tmp_path / "marked.jsonl"
    marked.write_bytes(codecs.BOM_UTF8 + (tmp_path / "a.jsonl").read_bytes())
    for other in (make([array], tokenizer), make([marked], tokenizer)):
        assert [(s.prompt_ids, s.ground_truth, s.extra_info) for s in other] == [
            (s.prompt_ids, s.ground_truth, s.extra_info) for s in plain
        ]
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(rows, indent=2)[:-3])
    with pytest.raises(
        DataError, match=r"broken\.json: a JSON array of records that does not parse \(line \d+, column"
    ):
        make([broken], tokenizer)


def test_chat_template_is_applied_with_generation_prompt(tmp_path, tokenizer):
    ds = make([write_jsonl(tmp_path / "a.jsonl", [row("What is 3 + 4?")])], tokenizer)
    text = tokenizer.decode(ds[0].prompt_ids)
    assert text == "<s><|user|>What is 3 + 4?</s><|assistant|>"
    assert ds[0].prompt_ids.count(tokenizer.bos_token_id) == 1  # the template's BOS, not a second one


def test_plain_string_prompt_is_one_user_turn_and_raw_mode(tmp_path, tokenizer):
    f = write_jsonl(
        tmp_path / "a.jsonl", [{"prompt": "hello", "data_source": "s", "reward_model": {"ground_truth": 5}}]
    )
    ds = make([f], tokenizer)
    assert tokenizer.decode(ds[0].prompt_ids) == "<s><|user|>hello</s><|assistant|>"
    assert ds[0].ground_truth == "5"  # numbers become strings
    raw = make([f], tokenizer, apply_chat_template=False)
    assert "<|user|>" not in tokenizer.decode(raw[0].prompt_ids) and "hello" in tokenizer.decode(
        raw[0].prompt_ids
    )


def test_too_long_prompts_dropped_truncated_or_fatal_and_counted(tmp_path, tokenizer):
    rows = [row("hi"), row("What is 1 + 2? " * 20), row("ok"), row("What is 7 + 7? " * 30)]
    f = write_jsonl(tmp_path / "a.jsonl", rows)
    short_len = len(make([f], tokenizer, max_prompt_length=10_000)[0].prompt_ids)
    limit = short_len + 4

    dropped = make([f], tokenizer, max_prompt_length=limit, truncation="drop")
    assert len(dropped) == 2 and dropped.stats.too_long_dropped == 2 and dropped.stats.truncated == 0
    assert [s.index for s in dropped] == [0, 1]  # indices stay dense after dropping

    left = make([f], tokenizer, max_prompt_length=limit, truncation="left")
    full = make([f], tokenizer, max_prompt_length=10_000)
    assert len(left) == 4 and left.stats.truncated == 2
    assert left[1].prompt_ids == full[1].prompt_ids[-limit:]  # the end (generation prompt) survives

    with pytest.raises(DataError, match=r"a\.jsonl row 1: prompt is \d+ tokens, over data.max_prompt_length"):
        make([f], tokenizer, max_prompt_length=limit, truncation="error")


def test_dedup_keeps_first_and_counts_conflicts(tmp_path, tokenizer, caplog):
    rows = [row("A", gt="1"), row("B", gt="2"), row("A", gt="1"), row("A", gt="9"), row("C", gt="3")]
    f = write_parquet(tmp_path / "d.parquet", rows)
    assert len(make([f], tokenizer)) == 5  # off by default
    with caplog.at_level(logging.INFO, logger="megatron_hapo.data"):
        ds = make([f], tokenizer, dedup=True)
    assert len(ds) == 3 and [s.ground_truth for s in ds] == ["1", "2", "3"]
    assert ds.stats.duplicates == 2 and ds.stats.dedup_conflicts == 1 and ds.stats.rows_read == 5
    assert "d.parquet row 3 ('9') vs" in caplog.text and "2 duplicates removed" in caplog.text


def test_dedup_across_files(tmp_path, tokenizer):
    a = write_jsonl(tmp_path / "a.jsonl", [row("A"), row("B")])
    b = write_jsonl(tmp_path / "b.jsonl", [row("B"), row("C")])
    ds = make([a, b], tokenizer, dedup=True)
    assert len(ds) == 3 and ds[2].source.endswith("b.jsonl row 1")


BAD = [
    (
        {"prompt": [{"role": "user"}], "data_source": "s", "reward_model": {"ground_truth": "1"}},
        r"'prompt'\[0\] must be a \{role",
    ),
    ({"prompt": [], "data_source": "s", "reward_model": {"ground_truth": "1"}}, "non-empty list"),
    ({"prompt": "x", "data_source": "s", "reward_model": {}}, "ground truth 'reward_model.ground_truth'"),
    (
        {"prompt": "x", "data_source": "s", "reward_model": {"ground_truth": ["1", "2"]}},
        "must be a string or number, got list",
    ),
    ({"prompt": "x", "reward_model": {"ground_truth": "1"}}, "no 'data_source' string"),
    (
        {"prompt": "x", "data_source": "s", "reward_model": {"ground_truth": "1"}, "extra_info": [1]},
        "'extra_info' must be an object",
    ),
    ("[1, 2", "invalid JSON"),
]


@pytest.mark.parametrize("bad, match", BAD)
def test_bad_row_error_names_file_and_row(tmp_path, tokenizer, bad, match):
    f = write_jsonl(tmp_path / "bad.jsonl", [row("fine"), bad, row("also fine")])
    with pytest.raises(DataError, match=match) as e:
        make([f], tokenizer)
    assert f"{f} row 1" in str(e.value) and "data.bad_rows=skip" in str(e.value)


def test_bad_rows_skipped_are_counted(tmp_path, tokenizer):
    f = write_jsonl(tmp_path / "bad.jsonl", [row("fine"), *[b for b, _ in BAD], row("also fine")])
    ds = make([f], tokenizer, bad_rows="skip")
    assert len(ds) == 2 and ds.stats.bad_rows == len(BAD) and ds.stats.rows_read == len(BAD) + 2
    assert "bad rows skipped" in ds.stats.examples


def test_parquet_bad_row_names_row(tmp_path, tokenizer):
    rows = [row("a"), row("b")]
    rows[1]["reward_model"] = {"style": "rule", "ground_truth": None}
    f = write_parquet(tmp_path / "p.parquet", rows)
    with pytest.raises(DataError, match=r"p\.parquet row 1: ground truth"):
        make([f], tokenizer)


def test_custom_keys_and_default_data_source(tmp_path, tokenizer):
    f = write_jsonl(tmp_path / "c.jsonl", [{"question": "q?", "answer": "42", "meta": {"k": 1}}])
    keys = RowKeys(prompt="question", ground_truth="answer", extra_info="meta", default_data_source="custom")
    ds = make([f], tokenizer, keys=keys)
    assert (ds[0].ground_truth, ds[0].data_source, ds[0].extra_info) == ("42", "custom", {"k": 1})


def test_file_level_errors(tmp_path, tokenizer):
    with pytest.raises(DataError, match="file not found"):
        make([tmp_path / "nope.parquet"], tokenizer)
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unknown format '.csv'"):
        make([tmp_path / "x.csv"], tokenizer)
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="not a readable parquet file"):
        make([tmp_path / "broken.parquet"], tokenizer)
    f = write_jsonl(tmp_path / "long.jsonl", [row("What is 1 + 2? " * 20)])
    with pytest.raises(DataError, match="no usable prompts"):
        make([f], tokenizer, max_prompt_length=4)


def test_tokenizer_without_chat_template(tmp_path, tokenizer):
    import copy

    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    f = write_jsonl(tmp_path / "a.jsonl", [row("x")])
    with pytest.raises(DataError, match="no chat template.*data.apply_chat_template=false"):
        make([f], plain)
    assert len(make([f], plain, apply_chat_template=False)) == 1


def test_from_config_reads_the_data_section(tmp_path, tokenizer):
    f = write_jsonl(tmp_path / "a.jsonl", [row("A"), row("A"), row("B")])
    cfg = DataConfig(train_files=[str(f)], dedup=True, max_prompt_length=64, truncation="left")
    ds = PromptDataset.from_config(cfg, tokenizer)
    assert len(ds) == 2 and ds.max_prompt_length == 64 and ds.truncation == "left"
    assert len(PromptDataset.from_config(cfg, tokenizer, files=[str(f)])) == 2
