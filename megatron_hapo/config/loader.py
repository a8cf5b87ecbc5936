"""Loads YAML configs into the typed schema.

A config file is plain YAML with an optional top-level ``defaults:`` entry naming one parent file or a
list of them (paths relative to the file that names them; parents merge first, in list order, then the
file itself, then the command-line overrides). Values may use OmegaConf interpolation (``${trainer.run_dir}``,
``${oc.env:VAR,default}``). Overrides are ``key.sub=value`` strings whose value is parsed as YAML.

Every problem becomes a :class:`ConfigError` naming the key and the file (or command-line override)
that set it; unknown keys get a "did you mean" suggestion.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from megatron_hapo.config import introspect
from megatron_hapo.config.errors import ConfigError, ConfigIssue
from megatron_hapo.config.schema import RootConfig

SCHEMA_DEFAULT = "schema default"
DEFAULTS_KEY = "defaults"


def cli_source(override: str) -> str:
    return f"command line ({override})"


@dataclass
class LoadedConfig:
    """A loaded, type-checked config before cross-field validation.

    cfg: the resolved config as dataclass instances.
    origins: dotted key -> where its value was set (a YAML path or ``command line (k=v)``); keys left at
        their schema default are absent.
    files: the YAML files merged, in merge order (parents first).
    overrides: the command-line overrides applied, in order.
    """

    cfg: RootConfig
    origins: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)

    def source_of(self, key: str) -> str:
        return source_of(self.origins, key)

    def header(self) -> str:
        """Where this config came from, for the top of resolved_config.yaml."""
        lines = ["resolved by megatron-hapo from:"]
        lines += [f"  {f}" for f in self.files] or ["  (schema defaults)"]
        lines += [f"  override {o}" for o in self.overrides]
        return "\n".join(lines)


def source_of(origins: Mapping[str, str], key: str) -> str:
    """Where ``key`` was set: itself, else its closest parent section, else anything inside it."""
    parts = key.split(".")
    for i in range(len(parts), 0, -1):
        hit = origins.get(".".join(parts[:i]))
        if hit:
            return hit
    inside = [src for k, src in origins.items() if k.startswith(key + ".")]
    return inside[-1] if inside else SCHEMA_DEFAULT


# ------------------------------------------------------------------------------------------ YAML chain


def read_chain(path: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """The files to merge for ``path``, parents first, each with its mapping minus ``defaults``.

    Raises ConfigError for a missing file, a YAML syntax error, a non-mapping top level, a malformed
    ``defaults`` entry or an inheritance cycle, naming the file (and the file that referenced it).
    """
    out: list[tuple[Path, dict[str, Any]]] = []
    _read_into(Path(path), out, stack=(), referenced_from=None)
    return out


def _read_into(path: Path, out: list, stack: tuple[Path, ...], referenced_from: Path | None) -> None:
    path = path.expanduser()
    if not path.is_file():
        where = f" (named in 'defaults' of {referenced_from})" if referenced_from else ""
        raise ConfigError(
            ConfigIssue("", f"config file not found: {path}{where}", str(referenced_from or ""))
        )
    resolved = path.resolve()
    if resolved in stack:
        cycle = " -> ".join(str(p) for p in (*stack, resolved))
        raise ConfigError(ConfigIssue(DEFAULTS_KEY, f"inheritance cycle: {cycle}", str(path)))
    try:
        # OmegaConf's YAML loader (unlike plain PyYAML) reads 1e-6 as a float.
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as e:
        raise ConfigError(ConfigIssue("", f"YAML syntax error: {e}", str(path))) from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(
            ConfigIssue("", "the top level must be a mapping of sections, got a list", str(path))
        )
    data = OmegaConf.to_container(loaded, resolve=False)
    parents = data.pop(DEFAULTS_KEY, None)
    if parents is None:
        parents = []
    elif isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ConfigError(
            ConfigIssue(
                DEFAULTS_KEY, "must be a file path or a list of file paths (relative to this file)", str(path)
            )
        )
    for parent in parents:
        _read_into(path.parent / parent, out, (*stack, resolved), referenced_from=path)
    out.append((path, data))


def _leaf_paths(data: Any, prefix: str = "") -> Iterable[str]:
    if isinstance(data, dict) and data:
        for k, v in data.items():
            yield from _leaf_paths(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1]


# -------------------------------------------------------------------------------------------- errors


def suggest(full_key: str) -> str:
    """A "did you mean" hint for an unknown key, or "" when nothing is close."""
    parts = full_key.split(".")
    parent, leaf = ".".join(parts[:-1]), parts[-1]
    siblings = introspect.children(parent)
    close = difflib.get_close_matches(leaf, siblings, n=3, cutoff=0.6)
    hits = [f"{parent}.{c}" if parent else c for c in close]
    if not hits:
        # The key may exist in another section (trainer.lr -> optim.lr).
        by_leaf: dict[str, list[str]] = {}
        for p in introspect.all_paths():
            by_leaf.setdefault(p.rsplit(".", 1)[-1], []).append(p)
        for name in difflib.get_close_matches(leaf, list(by_leaf), n=2, cutoff=0.8):
            hits += by_leaf[name]
        hits = hits[:3]
    if hits:
        return "did you mean " + " or ".join(f"'{h}'" for h in hits) + "?"
    where = f"'{parent}'" if parent else "the top level"
    valid = ", ".join(siblings) if siblings else "(none: not a section)"
    return f"valid keys under {where}: {valid}"


def _friendly(msg: str) -> str:
    # OmegaConf's wording for the two common structural mistakes names its internals; say what to write.
    if "is not a subclass of" in msg:
        return f"this is a section: give it a mapping of keys, not a single value ({msg})"
    if "is not a ListConfig" in msg:
        return "expects a list, e.g. key=[a,b] on the command line or a YAML list"
    return msg


def _issue_from(e: OmegaConfBaseException, source: str, fallback_key: str = "") -> ConfigIssue:
    key = getattr(e, "full_key", None) or fallback_key
    # OmegaConf appends "full_key/object_type" lines to its message; the first line is the useful part.
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, ConfigKeyError):
        return ConfigIssue(key, f"unknown key; {suggest(key)}", source)
    return ConfigIssue(key, _friendly(msg), source)


# ---------------------------------------------------------------------------------------------- load


def _culprit(node: DictConfig, data: dict[str, Any]) -> str:
    """The top-level section of ``data`` that fails to merge (for errors OmegaConf gives without a key)."""
    for key, value in data.items():
        try:
            OmegaConf.merge(node, OmegaConf.create({key: value}))
        except OmegaConfBaseException:
            return str(key)
    return ""


def _parse_override(override: str) -> DictConfig:
    if not isinstance(override, str) or "=" not in override or override.startswith("="):
        raise ConfigError(
            ConfigIssue("", f"override {override!r} must look like key.sub=value", cli_source(str(override)))
        )
    if override.startswith(("+", "~")):
        raise ConfigError(
            ConfigIssue(
                "",
                f"override {override!r}: Hydra's +key/~key are not supported; every key exists in the schema, "
                "set it with key=value (or key=null)",
                cli_source(override),
            )
        )
    try:
        return OmegaConf.from_dotlist([override])
    except Exception as e:  # the YAML value could not be parsed
        raise ConfigError(
            ConfigIssue("", f"cannot parse override {override!r}: {e}", cli_source(override))
        ) from None


def compose(path: str | Path | None, overrides: Sequence[str] = ()) -> LoadedConfig:
    """Merge schema defaults, the YAML chain of ``path`` (may be None) and ``overrides``; resolve; type-check.

    Cross-field rules are not checked here (see ``validate``). Raises ConfigError.
    """
    node = OmegaConf.structured(RootConfig)
    origins: dict[str, str] = {}
    chain = read_chain(path) if path is not None else []
    for file, data in chain:
        try:
            node = OmegaConf.merge(node, OmegaConf.create(data))
        except OmegaConfBaseException as e:
            raise ConfigError(_issue_from(e, str(file), _culprit(node, data))) from None
        origins.update({k: str(file) for k in _leaf_paths(data) if k})
    for override in overrides:
        dot = _parse_override(override)
        try:
            node = OmegaConf.merge(node, dot)
        except OmegaConfBaseException as e:
            raise ConfigError(_issue_from(e, cli_source(override), override.split("=", 1)[0])) from None
        origins.update({k: cli_source(override) for k in _leaf_paths(OmegaConf.to_container(dot)) if k})

    missing = sorted(_missing_keys(node))
    if missing:
        raise ConfigError(
            [
                ConfigIssue(
                    k,
                    f"required value not set; set it in the YAML file or with {k}=...",
                    source_of(origins, k),
                )
                for k in missing
            ]
        )
    try:
        OmegaConf.resolve(node)
        cfg = OmegaConf.to_object(node)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or ""
        raise ConfigError(_issue_from(e, source_of(origins, key))) from None
    assert isinstance(cfg, RootConfig)
    return LoadedConfig(cfg=cfg, origins=origins, files=[f for f, _ in chain], overrides=list(overrides))


def _missing_keys(node: DictConfig, prefix: str = "") -> Iterable[str]:
    """Dotted keys still ``???``. Unlike OmegaConf.missing_keys this resolves no interpolation, so a
    broken interpolation elsewhere is reported as such, after the missing keys."""
    for key in node:
        path = f"{prefix}{key}"
        if OmegaConf.is_missing(node, key):
            yield path
        elif not OmegaConf.is_interpolation(node, key):
            child = node[key]
            if isinstance(child, DictConfig):
                yield from _missing_keys(child, path + ".")


def to_yaml(cfg: RootConfig) -> str:
    """The config as YAML (loadable again with ``load_config``)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
