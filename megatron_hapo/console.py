"""What ``hapo-train`` prints, and where everything else goes.

The console gets a first line naming the run directory, one line per step (the metrics table) and the
problems a user must act on: WARNING and above from ``megatron_hapo``, ERROR and above from any library.
Everything else (Megatron's and SGLang's INFO chatter, Python warnings, SGLang's 25 KB settings line,
the scheduler processes' output) goes to log files under ``run_dir/logs/``:

* ``rank{R}.log``: this process's logging at ``logging.level``, Python warnings included;
* ``sglang.log``: the in-process SGLang engine (its scheduler and detokenizer processes write there
  for their whole life; see :func:`fds_to`). If one of them dies, :class:`EngineCrashReport` prints
  the log's last lines on the console before SGLang kills the run.

``--verbose`` (or ``HAPO_VERBOSE=1``, which the flag sets so that torchrun's other ranks and SGLang's
processes see it too) sends all of it to the console again, with tracebacks of project errors; the log
files are written either way. A few warnings that are known to be benign on the CPU path are filtered
where they are emitted (:data:`BENIGN_WARNINGS`: specific messages from specific packages, never a
blanket ignore).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

VERBOSE_ENV = "HAPO_VERBOSE"
LOG_DIR = "logs"
FORMAT = "%(asctime)s %(name)s: %(message)s"

# (message regex, module regex) of warnings that say nothing a user can act on: the optional fused
# kernels (apex, Transformer Engine) are absent on CPU and the torch fallbacks are the intended path
# (models/precision.py logs which implementations run); SGLang's CUDA-only quantisation and Triton
# notices on a CPU machine; Megatron's notices about features this project does not use.
BENIGN_WARNINGS: tuple[tuple[str, str], ...] = (
    (r"Transformer Engine and Apex are not installed", r"megatron\."),
    (r"Apex is not installed\. Falling back to Torch Norm", r"megatron\."),
    (r"full scope is deprecated", r"megatron\."),
    (r"MimoModelConfig is experimental", r"megatron\."),
    (r"Only CUDA, .* support", r"sglang\."),
    (r"Triton is not supported on current platform", r"sglang\."),
)

_HANDLER_TAG = "_hapo_console"
FILE_ONLY = {"hapo_file_only": True}  # ``extra=`` of a record the quiet console leaves to the log file


def verbose() -> bool:
    """True when ``--verbose`` / ``HAPO_VERBOSE=1`` asked for the libraries' output on the console."""
    return os.environ.get(VERBOSE_ENV, "").strip() not in ("", "0", "false")


def set_verbose(on: bool) -> None:
    """Turn verbosity on for this process and every process it starts (environment variable)."""
    if on:
        os.environ[VERBOSE_ENV] = "1"


def rank() -> int:
    """This process's rank under torchrun (0 without a launcher)."""
    return int(os.environ.get("RANK", "0"))


def filter_benign_warnings() -> None:
    """Install the :data:`BENIGN_WARNINGS` filters (before Megatron/SGLang are imported: most are import-time)."""
    for message, module in BENIGN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=UserWarning, module=module)


class _ConsoleFilter(logging.Filter):
    """Never records marked :data:`FILE_ONLY`; when quiet, only WARNING+ from this project and ERROR+
    from everything else."""

    def __init__(self, quiet: bool):
        super().__init__()
        self.quiet = quiet

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "hapo_file_only", False):
            return False
        if not self.quiet:
            return True
        if record.name == "megatron_hapo" or record.name.startswith("megatron_hapo."):
            return record.levelno >= logging.WARNING
        return record.levelno >= logging.ERROR


def log_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / LOG_DIR


def setup_logging(run_dir: str | Path | None, level: str = "INFO") -> Path | None:
    """Route this process's logging: everything at ``level`` to ``run_dir/logs/rank{R}.log`` (returned;
    None without a run directory) and the console as the module docstring says. Idempotent: replaces
    the handlers it installed before, keeps any others (pytest's, for one)."""
    _remove_handlers()
    root = logging.getLogger()
    root.setLevel(getattr(logging, level))
    logging.captureWarnings(True)  # warnings.warn -> logger "py.warnings" -> the log file
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter(FORMAT))
    console.addFilter(_ConsoleFilter(quiet=not verbose()))
    handlers: list[logging.Handler] = [console]
    path = None
    if run_dir is not None:
        path = log_dir(run_dir) / f"rank{rank()}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(path, encoding="utf-8")
        file.setFormatter(logging.Formatter(FORMAT))
        handlers.append(file)
    for h in handlers:
        setattr(h, _HANDLER_TAG, True)
        root.addHandler(h)
    return path


@contextlib.contextmanager
def logging_to(run_dir: str | Path | None, level: str = "INFO") -> Iterator[Path | None]:
    """:func:`setup_logging` for the block; its handlers are removed (and closed) after it, so that a caller
    in the same process (a test, a notebook) does not keep logging to this run's files and streams."""
    path = setup_logging(run_dir, level)
    try:
        yield path
    finally:
        _remove_handlers()
        logging.captureWarnings(False)


def _remove_handlers() -> None:
    """Remove (and close) the root logger's handlers that :func:`setup_logging` installed."""
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, _HANDLER_TAG, False)]:
        root.removeHandler(h)
        h.close()


def engine_log_file(run_dir: str | Path | None) -> Path | None:
    """Where an in-process SGLang engine writes: ``run_dir/logs/sglang.log``; None (the console) when
    verbose or without a run directory."""
    if run_dir is None or verbose():
        return None
    return log_dir(run_dir) / "sglang.log"


def start_resource_tracker(log_file: str | Path | None) -> None:
    """Start multiprocessing's resource tracker, shared by every child process, with its output in
    ``log_file`` (:func:`engine_log_file`; None = the console): at exit it names and removes what the
    engine's SIGKILLed processes left (a semaphore), a notice for the log rather than the console. Call it
    before the first child process (a scorer pool) starts it elsewhere."""
    import multiprocessing.resource_tracker

    with fds_to(log_file):
        multiprocessing.resource_tracker.ensure_running()


@contextlib.contextmanager
def fds_to(path: str | Path | None) -> Iterator[None]:
    """Point file descriptors 1 and 2 at ``path`` (appending) inside the block; None = do nothing.

    Works at the descriptor level, so it catches output that never passes through Python's logging:
    C code, tqdm bars, and above all child processes started inside the block, which inherit the
    descriptors and keep writing to ``path`` after the block ends (SGLang's scheduler and detokenizer).
    """
    if path is None:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(target, 1)
        os.dup2(target, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, target):
            os.close(fd)


@contextlib.contextmanager
def keep_root_handlers() -> Iterator[None]:
    """Restore the root logger's handlers and level after the block: SGLang's ``Engine`` calls
    ``logging.basicConfig(force=True)`` in the calling process, which would drop the handlers above."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


class EngineCrashReport:
    """SGLang's SIGQUIT handler when the engine writes to a log file: a child process (scheduler,
    detokenizer) that fails SIGQUITs this process, and SGLang's own handler kills the process tree with
    nothing on the console. This one first writes the log's last lines to ``console_fd`` (a copy of the
    console's stderr), then does what SGLang's does (kill the process tree). A plain class, not a closure: SGLang pickles its
    server arguments into the scheduler process."""

    TAIL_LINES = 30

    def __init__(self, log_file: str, console_fd: int):
        self.log_file, self.console_fd = log_file, console_fd

    def __call__(self, signum, frame) -> None:
        try:
            with open(self.log_file, encoding="utf-8", errors="replace") as f:
                tail = "".join(f.readlines()[-self.TAIL_LINES :])
            os.write(
                self.console_fd,
                f"SGLang engine process failed; the last lines of {self.log_file}:\n{tail}\n".encode(),
            )
        finally:
            # what SGLang's handler does (sglang.srt.utils.kill_process_tree): SIGKILL the children, then
            # this process; done with psutil here so that the handler needs no heavy import
            import signal

            import psutil

            for child in psutil.Process().children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            os.kill(os.getpid(), signal.SIGKILL)
