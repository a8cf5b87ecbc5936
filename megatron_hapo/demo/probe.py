"""Where a demo policy gets the reasoning task right: held-out accuracy by level and by whether the
response skipped steps, with Hugging Face sampling (no engine, no Megatron).

    python -m megatron_hapo.demo.probe runs/demo_reasoning_model [--prompts 64] [--samples 2] [--temperature 1]

A response *skips* when one of its lines adds more than two numbers (``46+57+21=124``). The table shows
whether skipping costs accuracy and how accuracy and length change with the level (number of terms).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from megatron_hapo.demo.task import DATA_DIR, FILES

ANSWER = re.compile(r"Answer:\s*(\S+)")


def skipped(text: str) -> bool:
    """True when a line of ``text`` adds three or more numbers at once."""
    return any(line.count("+") > 1 for line in text.splitlines())


def probe(model_dir: Path, prompts: int, samples: int, temperature: float, seed: int = 0) -> dict:
    """``{(level, "skip"|"full"): [correct, ...], "lengths": {level: [tokens, ...]}}`` over the first
    ``prompts`` held-out rows, ``samples`` sampled responses each (at most 96 new tokens)."""
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    rows = pq.read_table(DATA_DIR / FILES["heldout"]).to_pylist()[:prompts]
    texts = [tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False) for r in rows]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(seed)
    out: dict = {"lengths": {}}
    for _ in range(samples):
        with torch.no_grad():
            gen = model.generate(
                **enc, max_new_tokens=96, do_sample=True, temperature=temperature, top_p=1.0,
                pad_token_id=tok.pad_token_id,
            )  # fmt: skip
        for row, ids in zip(rows, gen[:, enc.input_ids.shape[1] :], strict=True):
            text = tok.decode(ids, skip_special_tokens=True)
            found = ANSWER.findall(text)
            ok = bool(found) and found[-1] == row["reward_model"]["ground_truth"]
            level = row["extra_info"]["level"]
            out.setdefault((level, "skip" if skipped(text) else "full"), []).append(ok)
            out["lengths"].setdefault(level, []).append(int((ids != tok.pad_token_id).sum()))
    return out


if __name__ == "__main__":  # the command lives in megatron_hapo/cli/demo_probe.py
    from megatron_hapo.cli.demo_probe import main

    sys.exit(main())
