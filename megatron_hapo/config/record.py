"""Records the resolved config of a run: rank 0 prints it and writes ``<run_dir>/resolved_config.yaml``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TextIO

from megatron_hapo.config.loader import to_yaml
from megatron_hapo.config.schema import RootConfig

RESOLVED_NAME = "resolved_config.yaml"


def save_resolved(
    cfg: RootConfig,
    run_dir: str | Path | None = None,
    *,
    rank: int | None = None,
    echo: bool = True,
    stream: TextIO | None = None,
    header: str | None = None,
) -> Path | None:
    """On rank 0, write ``cfg`` as YAML to ``<run_dir>/resolved_config.yaml`` (and print it if ``echo``).

    run_dir: defaults to ``cfg.trainer.run_dir`` (created if needed).
    rank: defaults to the ``RANK`` environment variable (torchrun), else 0. Other ranks do nothing:
        every rank parsed the same argv, so nothing needs broadcasting.
    header: optional comment lines put on top (e.g. the files and overrides it came from).
    Returns the written path on rank 0, None elsewhere. The file loads back with ``load_config``.
    """
    if rank is None:
        rank = int(os.environ.get("RANK", "0"))
    if rank != 0:
        return None
    text = to_yaml(cfg)
    if header:
        text = "".join(f"# {line}\n" for line in header.splitlines()) + text
    out_dir = Path(run_dir if run_dir is not None else cfg.trainer.run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RESOLVED_NAME
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)  # atomic: a crash never leaves a half-written config behind
    if echo:
        stream = stream or sys.stdout
        stream.write(f"resolved config ({path}):\n{text}")
        stream.flush()
    return path
