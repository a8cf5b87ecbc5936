"""The answers of an evaluation, kept as they are scored, so that an interrupted evaluation resumes where it stopped.

A journal is a JSON-lines file: a header line with what the answers depend on (the model, the files it was read
from, the sampling settings, the seed, whether the answers' texts are kept, and a fingerprint of each benchmark's
prompts), then one line per answered prompt::

    {"journal": 1, "settings": {...}, "model_files": "2 files, 1234 bytes, ...", "benchmarks": {"AIME24": "<sha256>"}}
    {"benchmark": "AIME24", "prompt": 0, "version": "...", "outcomes": [[acc, length, finish, timeout, error], ...],
     "records": [...] | null}

``evaluate(..., journal=...)`` asks it which prompts are answered, generates the others and appends each batch's
answers as soon as they are scored (one write and fsync per batch). Opening a journal written for other settings
or other prompts is an error naming what differs: answers of different evaluations never mix. That includes a model
written anew at the same path (another export or conversion into the same directory): the header keeps the names,
sizes and modification times of the model's files (:func:`files_identity`). A journal that holds no answer yet (a
start that failed before the first batch) is taken over by whichever evaluation opens it. A line cut short by a
crash while it was written is dropped (its prompt is answered again).

With a seed (``evaluate(..., seed=S)``) the resumed evaluation's result is the uninterrupted one's: answer j of
prompt i is drawn with a seed of its own, whatever else ran before it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import astuple, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from megatron_hapo.config.errors import HapoError
from megatron_hapo.eval.benchmarks import Benchmark
from megatron_hapo.eval.metrics import SampleOutcome

logger = logging.getLogger(__name__)

FORMAT = 1


class JournalMismatch(HapoError, ValueError):
    """A journal written by another evaluation (other model, settings or prompts) than the one resuming."""


@dataclass(frozen=True)
class AnsweredPrompt:
    """One prompt's k scored answers, as the journal keeps them."""

    outcomes: list[SampleOutcome]
    records: list[dict[str, Any]] | None  # the answers' texts and scores (evaluate(keep_samples=True))
    version: str | None  # the engine's weight version that answered


def fingerprint(bench: Benchmark) -> str:
    """sha256 of a benchmark's prompts as the engine and the scorer see them (token ids, data source, ground
    truth, extra info): another file, chat template, tokenizer, length limit or --max-prompts changes it."""
    digest = hashlib.sha256()
    for p in bench.prompts:
        row = [p.prompt_ids, p.data_source, p.ground_truth, p.extra_info]
        digest.update(json.dumps(row, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def files_identity(path: str | Path | None) -> str | None:
    """What identifies the files at ``path`` without reading them: a file, or the files directly in a directory
    (an HF checkpoint's weights, config and tokenizer; not its subdirectories, where a run directory may be). Their
    count, total size and newest modification time, and the sha256 of every file's name, size and modification time
    (ns): writing any of them anew changes it; reading them or copying them with their times (``cp -p``,
    ``rsync -a``) does not. None where ``path`` names nothing on this filesystem (a hub id, a label of random
    weights)."""
    if path is None or not Path(path).exists():
        return None
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.iterdir() if p.is_file())
    digest, size, newest = hashlib.sha256(), 0, 0
    for p in files:
        st = p.stat()
        digest.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        size, newest = size + st.st_size, max(newest, st.st_mtime_ns)
    when = datetime.fromtimestamp(newest / 1e9, UTC).isoformat(timespec="microseconds") if files else "-"
    return f"{len(files)} files, {size} bytes, newest {when} (sha256 {digest.hexdigest()[:16]})"


class AnswerJournal:
    """The journal at ``path`` for an evaluation with ``settings`` (JSON-able; ``settings["model"]`` the model's
    path or label) over ``benchmarks``: resumed when the file exists (and matches), created otherwise."""

    def __init__(self, path: str | Path, settings: Mapping[str, Any], benchmarks: Iterable[Benchmark]):
        self.path = Path(path)
        self.header = {
            "journal": FORMAT,
            "settings": json.loads(json.dumps(dict(settings))),  # as it reads back (tuples -> lists)
            "model_files": files_identity(settings.get("model")),
            "benchmarks": {b.name: fingerprint(b) for b in benchmarks},
        }
        self._answered: dict[tuple[str, int], AnsweredPrompt] = {}
        if self.path.exists() and self.path.stat().st_size > 0:
            self._read()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._append([self.header])

    def __len__(self) -> int:
        return len(self._answered)

    def answered(self, benchmark: str, index: int) -> AnsweredPrompt | None:
        return self._answered.get((benchmark, index))

    def record(self, benchmark: str, answers: Mapping[int, AnsweredPrompt]) -> None:
        """Append the answers of a batch of ``benchmark``'s prompts (``{prompt index: answers}``), durably."""
        lines = []
        for index, a in answers.items():
            self._answered[(benchmark, index)] = a
            lines.append({"benchmark": benchmark, "prompt": index, "version": a.version,
                          "outcomes": [list(astuple(o)) for o in a.outcomes], "records": a.records})  # fmt: skip
        self._append(lines)

    def _append(self, lines: list[dict[str, Any]]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())

    def _read(self) -> None:
        text = self.path.read_text(encoding="utf-8")
        lines = text.split("\n")
        complete, torn = lines[:-1], lines[-1]  # the text after the last newline was cut short by a crash
        if torn:
            logger.warning("%s: its last line was cut short (an interrupted write); that prompt is answered again",
                           self.path)  # fmt: skip
        try:
            header = json.loads(complete[0]) if complete else None
        except json.JSONDecodeError:
            header = None
        if not isinstance(header, dict) or header.get("journal") != FORMAT:
            raise JournalMismatch(f"{self.path} is not an answer journal of this version: remove it, or give "
                                  "another run directory")  # fmt: skip
        if header != self.header and len(complete) == 1:  # no answer yet (a start that failed before any)
            logger.info("%s: no answers yet, for other settings; it starts anew with these", self.path)
            self.path.unlink()
            self._append([self.header])
            return
        if header != self.header:
            raise JournalMismatch(f"{self.path} holds the answers of another evaluation ({_differences(header, self.header)}): "
                                  "rerun with the arguments it was written with to resume it, or give another run "
                                  "directory")  # fmt: skip
        if torn:  # the next append starts on a line of its own
            self.path.write_text("\n".join(complete) + "\n", encoding="utf-8")
        for line in complete[1:]:
            row = json.loads(line)
            outcomes = [SampleOutcome(*o) for o in row["outcomes"]]
            self._answered[(row["benchmark"], row["prompt"])] = AnsweredPrompt(
                outcomes, row["records"], row["version"]
            )


def _differences(written: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    """What differs between the journal's header and this evaluation's, in words."""
    out = []
    old, new = written.get("settings", {}), wanted["settings"]
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            out.append(f"{key} {old.get(key)!r} there, {new.get(key)!r} here")
    if written.get("model_files") != wanted["model_files"]:
        out.append(f"the model's files: {written.get('model_files')} there, {wanted['model_files']} here")
    old_b, new_b = written.get("benchmarks", {}), wanted["benchmarks"]
    if list(old_b) != list(new_b):
        out.append(f"benchmarks {list(old_b)} there, {list(new_b)} here")
    else:
        out += [f"the prompts of {name} differ" for name in new_b if old_b[name] != new_b[name]]
    return "; ".join(out) or "another format"
