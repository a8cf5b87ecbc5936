"""The update's per-micro-batch loss metrics reach the host in one copy, with the values ``float()`` gives."""

from __future__ import annotations

import torch

from megatron_hapo.trainer.policy import metrics_to_host


def test_metrics_to_host_keeps_every_value_key_and_row_order():
    rows = [
        {"pg_loss": torch.tensor(0.1234567, dtype=torch.float32), "n_tokens": torch.tensor(7.0)},
        {"pg_loss": torch.tensor(-3.5, dtype=torch.float64), "n_tokens": torch.tensor(0.0)},
        {"ratio/max": torch.tensor(1.0e30), "h_hat/min": torch.tensor(1.5, dtype=torch.bfloat16)},
        {"custom/count": 3, "custom/mean": 0.25, "pg_loss": torch.tensor(4.0)},
    ]
    host = metrics_to_host(rows)
    assert host == [{k: float(v) for k, v in row.items()} for row in rows]
    assert [list(r) for r in host] == [list(r) for r in rows]
    assert all(type(v) is float for r in host for v in r.values())
    assert metrics_to_host([]) == [] and metrics_to_host([{"n": 1}]) == [{"n": 1.0}]
