"""Step metrics: what a step's batch looked like, and where metrics go (metrics.jsonl, TensorBoard, console).

Only global rank 0 writes. ``metrics.jsonl`` has one JSON object per step with at least: step,
reward/mean, acc/mean, entropy/mean, response_length/mean, temperature/mean, time/step_s, the loss
metrics (actor/*), optim/grad_norm, optim/lr, time/sync_s and the layout's perf/* (:func:`perf_metrics`).
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_hapo.parallel import compute_device
from megatron_hapo.trainer.batch import StepBatch
from megatron_hapo.trainer.batching import StepPlan

logger = logging.getLogger(__name__)

# the console table: (metric, header, format)
CONSOLE_COLUMNS = (
    ("step", "step", "{:>4.0f}"),
    ("reward/mean", "reward", "{:>7.3f}"),
    ("acc/mean", "acc", "{:>5.2f}"),
    ("entropy/mean", "entropy", "{:>7.3f}"),
    ("temperature/mean", "temp", "{:>6.3f}"),
    ("response_length/mean", "resp_len", "{:>8.1f}"),
    ("actor/pg_loss", "pg_loss", "{:>8.4f}"),
    ("optim/grad_norm", "grad_norm", "{:>9.4f}"),
    ("time/step_s", "step_s", "{:>6.1f}"),
    ("eta", "eta", "{:>8}"),  # console only: a forecast, not a measurement (RunLogger.log)
)
# a row with none of these is an evaluation's alone (before training, or one a resume finished): no table line
_TRAINING_COLUMNS = tuple(key for key, _, _ in CONSOLE_COLUMNS if key not in ("step", "eta"))
# the ETA: the steps left times the mean wall time between the last ETA_WINDOW + 1 rows, so that evaluations
# and checkpoint saves count (time/step_s leaves them out); a slower phase moves it for a while only
ETA_WINDOW = 10


def batch_metrics(
    batch: StepBatch, entropy: torch.Tensor, mask: torch.Tensor, temps: torch.Tensor, group=None
) -> dict:
    """Reward, accuracy, length, entropy and temperature statistics of the step's whole batch.

    ``entropy``/``mask``/``temps`` are this data-parallel rank's slice; with ``group`` (the DP group;
    collective: every rank of it calls this) the token statistics are over every rank's slice."""
    lengths = [len(s.response_ids) for s in batch.samples]
    n = max(len(batch), 1)
    out = {
        "reward/mean": sum(batch.scores) / n,
        "reward/max": max(batch.scores, default=0.0),
        "reward/min": min(batch.scores, default=0.0),
        "acc/mean": sum(batch.accs) / n,
        "response_length/mean": sum(lengths) / n,
        "response_length/max": float(max(lengths, default=0)),
        "response_length/clip_frac": sum(s.finish_reason == "length" for s in batch.samples) / n,
        **token_metrics(entropy, temps, mask, group),
        **sampler_temperatures(batch),
    }
    out.update({k: v for k, v in batch.extra_metrics.items()})
    return out


def sampler_temperatures(batch: StepBatch) -> dict:
    """rollout/temperature_{mean,min,max}: the temperatures the HAPO sampler drew the tokens at (its
    per-token ``hapo_temperature``), whatever temperature the loss's ratio uses (``temperature/*``:
    with ``ratio_temperature=base`` those stay at the base T). Empty without the HAPO sampler."""
    per_response = [s.temperatures for s in batch.samples if s.temperatures]
    if not per_response:
        return {}
    # per-response builtins: no step-sized list of every token's temperature (millions at recipe scale)
    count = sum(len(t) for t in per_response)
    return {
        "rollout/temperature_mean": sum(sum(t) for t in per_response) / count,
        "rollout/temperature_min": min(min(t) for t in per_response),
        "rollout/temperature_max": max(max(t) for t in per_response),
    }


def token_metrics(entropy: torch.Tensor, temps: torch.Tensor, mask: torch.Tensor, group=None) -> dict:
    """entropy/mean and temperature/{mean,min,max} over the valid response tokens of every rank of
    ``group`` (sums, counts, min and max all-reduced; None or one rank = this rank's tokens); 0 when no
    rank has a token."""
    valid = mask.bool()
    e, t = entropy[valid].double(), temps[valid].double()
    empty = t.numel() == 0
    sums = torch.stack(
        [e.sum(), t.sum(), torch.tensor(float(t.numel()), dtype=torch.float64, device=t.device)]
    )
    # min and -max in one MIN reduction; +inf where this rank has no token
    inf = torch.tensor(math.inf, dtype=torch.float64, device=t.device)
    extremes = torch.stack([inf if empty else t.min(), inf if empty else -t.max()])
    if group is not None and dist.get_world_size(group) > 1:
        sums, extremes = sums.to(compute_device()), extremes.to(compute_device())  # NCCL: CUDA tensors
        dist.all_reduce(sums, group=group)
        dist.all_reduce(extremes, op=dist.ReduceOp.MIN, group=group)
    count = float(sums[2])
    if count == 0:
        return {"entropy/mean": 0.0, "temperature/mean": 0.0, "temperature/min": 0.0, "temperature/max": 0.0}
    return {
        "entropy/mean": float(sums[0]) / count,
        "temperature/mean": float(sums[1]) / count,
        "temperature/min": float(extremes[0]),
        "temperature/max": -float(extremes[1]),
    }


def perf_metrics(plan: StepPlan, old_s: float, update_s: float) -> dict:
    """perf/*: the step's layout (padding ratios of the update and the old pass = computed token slots /
    real tokens; micro-batches per rank; DP token spread as max and min over the mean) and
    perf/train_tokens_per_s = real (prompt + response) tokens of the step, all ranks, / (old pass + update)."""
    real = sum(plan.seq_lens)
    return {**plan.stats(), "perf/train_tokens_per_s": real / max(old_s + update_s, 1e-9)}


class RunLogger:
    """Writes metrics on the lead rank; a no-op elsewhere."""

    def __init__(
        self,
        run_dir: str | Path,
        cfg,
        *,
        lead: bool,
        resume_step: int | None = None,
        total_steps: int | None = None,
    ):
        """``cfg``: the run's RootConfig (its ``logging`` section decides the sinks; wandb records all of it).
        ``total_steps``: the run's last step, for the console's ETA (none without it).

        ``resume_step``: the step of the checkpoint the run continues from (0 = a fresh start). Rows of
        later steps, written by the attempt that was interrupted after that checkpoint, are dropped from
        ``metrics.jsonl`` and hidden in TensorBoard (``purge_step``): every step appears once. None: keep
        whatever is there."""
        log = cfg.logging
        self.run_dir, self.lead, self.stdout_every, self.plots = (
            Path(run_dir),
            lead,
            log.stdout_every,
            log.plots,
        )
        self._jsonl = self._tb = self._wandb = None
        self._header_printed = False
        self.total_steps = total_steps
        self._step_times: collections.deque[float] = collections.deque(maxlen=ETA_WINDOW)
        self._last_row: tuple[int, float] | None = None  # (step, time.monotonic()) of the last training row
        if not lead:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if log.jsonl:
            if resume_step is not None:
                truncate_step_rows(self.run_dir / "metrics.jsonl", resume_step)
            self._jsonl = (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8")
        if log.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # events at or after purge_step, from the interrupted attempt, are hidden from TensorBoard
            purge = None if resume_step is None else (resume_step + 1 if resume_step else 0)
            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge)
        if log.wandb:  # config validation has checked the package is there
            import dataclasses

            import wandb

            self._wandb = wandb.init(
                project=log.wandb_project, name=cfg.trainer.experiment_name, dir=str(self.run_dir),
                config=dataclasses.asdict(cfg), resume="allow",
            )  # fmt: skip

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.lead:
            return
        row = {"step": step, **{k: _clean(v) for k, v in sorted(metrics.items())}}
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(row) + "\n")
            self._jsonl.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if k != "step"}, step=step)
        now = time.monotonic()
        if self._last_row is not None and step > self._last_row[0]:
            self._step_times.append((now - self._last_row[1]) / (step - self._last_row[0]))
        elif row.get("time/step_s") is not None:  # the first step: no earlier row to measure from
            self._step_times.append(row["time/step_s"])
        if step > 0:
            self._last_row = (step, now)
        evaluation = format_eval(row)
        if self.stdout_every and step % self.stdout_every == 0 and any(k in row for k in _TRAINING_COLUMNS):
            if not self._header_printed:
                print(format_header(), flush=True)
                self._header_printed = True
            eta = {}
            if self.total_steps is not None and self._step_times:
                left = max(self.total_steps - step, 0) * sum(self._step_times) / len(self._step_times)
                eta = {"eta": format_duration(left)}
            print(format_row({**row, **eta}), flush=True)
        if evaluation is not None:  # every evaluation, whatever stdout_every: they are few and long
            print(evaluation, flush=True)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            if self.plots:
                self._plot()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()

    def _plot(self) -> None:
        from megatron_hapo.trainer.plots import load_rows, plot_overview

        try:
            out = plot_overview(load_rows(self.run_dir), self.run_dir / "plots" / "metrics.png")
        except ImportError as e:  # curves are a convenience: the metrics are in metrics.jsonl either way
            logger.warning("no plots/metrics.png: %s (pip install matplotlib, or logging.plots=false)", e)
        except ValueError as e:  # nothing logged yet (a run stopped before its first step)
            logger.info("no plots/metrics.png: %s", e)
        else:
            logger.info("curves: %s", out)


def _clean(v):
    v = float(v)
    return v if math.isfinite(v) else None


def format_header() -> str:
    widths = [len(fmt.format(0)) for _, _, fmt in CONSOLE_COLUMNS]
    return " ".join(h.rjust(w) for (_, h, _), w in zip(CONSOLE_COLUMNS, widths))


def format_row(row: dict) -> str:
    cells = []
    for key, _, fmt in CONSOLE_COLUMNS:
        v = row.get(key)
        cells.append(fmt.format(v) if isinstance(v, (int, float, str)) else "-".rjust(len(fmt.format(0))))
    return " ".join(cells)


def format_eval(row: dict) -> str | None:
    """The console line of an evaluation in ``row`` (a metrics row), or None when it holds none:
    ``eval after step 2: avg@8 0.438 (AIME24 0.375, MATH500 0.500)`` (the mean over benchmarks, then each)."""
    means = [k for k in row if k.startswith("eval/avg@")]
    if not means:
        return None
    at = means[0].removeprefix("eval/")
    each = [
        f"{k.split('/')[1]} {v:.3f}" for k, v in row.items() if k.count("/") == 2 and k.endswith(f"/{at}")
    ]
    when = "before training" if row["step"] == 0 else f"after step {row['step']}"
    return f"eval {when}: {at} {row[means[0]]:.3f} ({', '.join(each)})"


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` (``27:46:40`` for 100000 s)."""
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


def truncate_step_rows(path: Path, resume_step: int) -> int:
    """Drop the rows of ``path`` (JSON lines with a ``step``: metrics.jsonl, eval_history.jsonl) that a run
    resuming after ``resume_step`` will write again: steps after it, or every row on a fresh start
    (``resume_step`` 0, where step 0 is the evaluation before training, written again too). A torn last line
    (a killed write) goes as well. Rewritten atomically; returns the number of rows dropped."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            dropped += bool(line.strip())
            continue
        if resume_step and step <= resume_step:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        os.replace(tmp, path)
        logger.warning(
            "%s: dropped %d row(s) after step %d (the interrupted attempt's)", path, dropped, resume_step
        )
    return dropped


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of ``<run_dir>/metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
