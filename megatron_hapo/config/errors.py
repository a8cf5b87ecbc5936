"""The project's user-facing error base class, and the one error type config loading raises (carrying
every problem found at once)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConfigIssue:
    """One problem with a configuration.

    key: dotted key path (``parallel.tensor_model_parallel_size``); empty for file-level problems.
    message: what is wrong and what to do about it.
    source: where the offending value came from: a YAML file path, ``command line (key=value)``,
        ``schema default`` or ``environment``.
    """

    key: str
    message: str
    source: str = ""

    def render(self) -> str:
        where = f" [{self.source}]" if self.source else ""
        key = f"{self.key}: " if self.key else ""
        return f"{key}{self.message}{where}"


class HapoError(Exception):
    """Base of the errors a user can fix: bad config, bad data, a model or checkpoint that does not fit.

    The message says what was wrong, where (key, file, row, rank) and what to do. The console scripts
    print it as ``hapo-train: <message>`` (rank 0 only, no traceback unless ``--verbose``); any other
    exception is a bug and keeps its traceback.
    """


class ConfigError(HapoError, ValueError):
    """Raised when a configuration cannot be loaded or fails validation.

    ``issues`` lists every problem found (validation reports all of them, not just the first); the
    message renders one line per issue, each naming the key and the file (or command line) it came from.
    """

    def __init__(self, issues: list[ConfigIssue] | ConfigIssue, header: str = "invalid configuration"):
        self.issues = [issues] if isinstance(issues, ConfigIssue) else list(issues)
        lines = [f"{header} ({len(self.issues)} problem{'s' if len(self.issues) != 1 else ''}):"]
        lines += [f"  - {issue.render()}" for issue in self.issues]
        super().__init__("\n".join(lines))
