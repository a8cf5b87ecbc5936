"""The key reference, rendered from the schema: ``hapo-train --help-config`` and ``docs/config.md``.

Both come from the same walk over the dataclasses (type, default, one-line help per key), so the docs
cannot drift from the code; a test checks that docs/config.md holds the current rendering.
"""

from __future__ import annotations

import re
from pathlib import Path

from megatron_hapo.config.introspect import iter_keys

BEGIN_MARK = (
    "<!-- BEGIN GENERATED KEY REFERENCE (python -m megatron_hapo.config --update-doc docs/config.md) -->"
)
END_MARK = "<!-- END GENERATED KEY REFERENCE -->"


def help_config() -> str:
    """Every key with its type, default and one-line meaning, grouped by section (plain text)."""
    keys = list(iter_keys())
    lines = [
        "megatron-hapo configuration keys. Set them in a YAML file (defaults: inherits from other files)",
        "or on the command line as key.sub=value. ??? = required. Full guide: docs/config.md",
    ]
    for k in keys:
        if k.is_section:
            if k.path.count(".") == 0:
                lines.append("")
            lines.append(f"[{k.path}]  {k.help}")
            continue
        lines.append(f"  {k.path}: {k.type} = {k.default}")
        lines.append(f"      {k.help}")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown() -> str:
    """The key reference as Markdown tables, one per top-level section."""
    out: list[str] = []
    for k in iter_keys():
        if k.is_section:
            depth = k.path.count(".")
            if depth == 0:
                out += [
                    "",
                    f"### `{k.path}`: {k.help}",
                    "",
                    "| key | type | default | meaning |",
                    "|---|---|---|---|",
                ]
            else:
                out.append(f"| `{k.path}.*` | section | | {_cell(k.help)} |")
            continue
        out.append(f"| `{k.path}` | `{_cell(k.type)}` | `{_cell(k.default)}` | {_cell(k.help)} |")
    return "\n".join(out).lstrip("\n") + "\n"


def update_doc(path: str | Path) -> bool:
    """Rewrite the generated block of the Markdown file at ``path``; True if its content changed.

    Raises ValueError if the file lacks the BEGIN/END markers.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(BEGIN_MARK) + r".*?" + re.escape(END_MARK), re.S)
    if not pattern.search(text):
        raise ValueError(f"{path}: no generated block; add the lines\n{BEGIN_MARK}\n{END_MARK}")
    new = pattern.sub(lambda _: f"{BEGIN_MARK}\n\n{render_markdown()}\n{END_MARK}", text)
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text
