"""Prompt data: parquet (verl/HAPO schema) and JSONL rows, chat-templated and tokenized, with
counted length limits and de-duplication, and a deterministic, resumable prompt order.

    ds = PromptDataset.from_config(cfg.data, tokenizer)          # cfg: megatron_hapo.config.RootConfig
    order = PromptOrder(len(ds), cfg.data.train_batch_size, seed=cfg.data.seed)
    batch = ds.batch(order.next_batch())                       # list[PromptSample]
    ckpt["data_order"] = order.state_dict()                      # ... later: order.load_state_dict(...)
"""

from megatron_hapo.data.dataset import DatasetStats, PromptDataset, PromptSample
from megatron_hapo.data.order import PromptOrder
from megatron_hapo.data.rows import DataError, PromptRow, RowKeys, iter_records, parse_record

__all__ = [
    "DataError",
    "DatasetStats",
    "PromptDataset",
    "PromptRow",
    "PromptSample",
    "PromptOrder",
    "RowKeys",
    "iter_records",
    "parse_record",
]
