"""A checkpoint's manifest: the list of its files with their sizes and CRC-32s, written last.

``manifest.json`` = ``{"format": 1, "step": N, "files": {"<relative path>": {"size": bytes, "crc32": int}}}``
over every other file of the checkpoint directory. :func:`write` reads every file once (fsyncing it on the
way), writes the manifest, fsyncs it and the directory; only then does the caller rename the directory
into place. :func:`check` re-reads the files and names the first one that is missing, has another size
or another checksum: a truncated or corrupted checkpoint is found before anything loads it.

Cost: one read of the checkpoint at save and one at resume (CRC-32 runs at several GB/s; the resume's read
also warms the page cache for the load that follows).
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

from megatron_hapo.config.errors import HapoError

MANIFEST = "manifest.json"
FORMAT = 1
_CHUNK = 1 << 22


class CheckpointInvalid(HapoError, ValueError):
    """A checkpoint directory that must not be loaded; the message names it and what is wrong."""


def file_digest(path: Path, fsync: bool = False) -> tuple[int, int]:
    """``(size, crc32)`` of ``path``; with ``fsync`` also flushes it to disk (whichever rank wrote it)."""
    crc, size = 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
        if fsync:
            os.fsync(f.fileno())
    return size, crc


def fsync_dir(path: Path) -> None:
    """Make the directory's entries (creations, renames) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def write(directory: str | Path, step: int) -> Path:
    """Fsync every file of ``directory`` and its sub-directories, then write and fsync the manifest."""
    directory = Path(directory)
    files = {}
    for p in _files(directory):
        size, crc = file_digest(p, fsync=True)
        files[p.relative_to(directory).as_posix()] = {"size": size, "crc32": crc}
    for d in sorted({p.parent for p in directory.rglob("*") if p.is_file()} | {directory}, reverse=True):
        fsync_dir(d)  # deepest first: the entries of every sub-directory, then the top
    out = directory / MANIFEST
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"format": FORMAT, "step": step, "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(directory)
    return out


def check(directory: str | Path) -> int:
    """Verify ``directory`` against its manifest; return the step it records.

    Raises :class:`CheckpointInvalid` naming the checkpoint and the first problem found."""
    directory = Path(directory)
    files, step = _read(directory)
    for rel, want in sorted(files.items()):
        p = directory / rel
        if not p.is_file():
            raise CheckpointInvalid(f"{p}: missing (listed in {MANIFEST})")
        size, crc = file_digest(p)
        if size != want["size"]:
            raise CheckpointInvalid(f"{p}: {size} bytes, the manifest says {want['size']} (truncated?)")
        if crc != want["crc32"]:
            raise CheckpointInvalid(
                f"{p}: CRC-32 {crc:#010x}, the manifest says {want['crc32']:#010x} (corrupted)"
            )
    return step


def recorded_step(directory: str | Path) -> int:
    """The step ``directory``'s manifest records, without reading the files (:func:`check` does): for a
    checkpoint already checked, whose second read would cost as much as the first."""
    return _read(Path(directory))[1]


def _read(directory: Path) -> tuple[dict, int]:
    """The manifest's files and step."""
    path = directory / MANIFEST
    if not path.is_file():
        raise CheckpointInvalid(
            f"{directory}: no {MANIFEST} (an unfinished save, or not written by megatron-hapo)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files, step = dict(manifest["files"]), int(manifest["step"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointInvalid(f"{path}: unreadable manifest ({type(e).__name__}: {e})") from None
    if manifest.get("format") != FORMAT:
        raise CheckpointInvalid(
            f"{path}: manifest format {manifest.get('format')!r}, this version reads {FORMAT}"
        )
    return files, step
