"""Prompt data: parquet (verl/HAPO schema) and JSONL rows, chat-templated and tokenized, with
counted length limits and de-duplication, and a deterministic resumable sampler.

    ds = PromptDataset.from_config(cfg.data, tokenizer)          # cfg: megatron_hapo.config.RootConfig
    sampler = ResumableSampler(len(ds), cfg.data.train_batch_size, seed=cfg.data.seed)
    batch = ds.batch(sampler.next_batch())                       # list[PromptSample]
    ckpt["sampler"] = sampler.state_dict()                       # ... later: sampler.load_state_dict(...)
"""

from megatron_hapo.data.dataset import DatasetStats, PromptDataset, PromptSample
from megatron_hapo.data.rows import DataError, PromptRow, RowKeys, iter_records, parse_record
from megatron_hapo.data.sampler import ResumableSampler

__all__ = [
    "DataError",
    "DatasetStats",
    "PromptDataset",
    "PromptRow",
    "PromptSample",
    "ResumableSampler",
    "RowKeys",
    "iter_records",
    "parse_record",
]
