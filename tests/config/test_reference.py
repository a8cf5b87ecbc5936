"""The key reference: --help-config, docs/config.md, and the dry-run CLI."""

from __future__ import annotations

from megatron_hapo.config import help_config
from megatron_hapo.config.__main__ import main
from megatron_hapo.config.introspect import iter_keys
from megatron_hapo.config.reference import BEGIN_MARK, render_markdown

from .conftest import CONFIGS, REPO


def test_help_config_lists_every_key_with_default_and_meaning():
    text = help_config()
    for k in iter_keys():
        if not k.is_section:
            assert f"  {k.path}: {k.type} = {k.default}\n      {k.help}\n" in text
    assert "algorithm.loss.clip_high: float = 0.2" in text
    assert "model.hf_path: str = ???" in text


def test_docs_config_md_holds_the_current_reference():
    doc = (REPO / "docs" / "config.md").read_text()
    assert BEGIN_MARK in doc
    assert render_markdown() in doc, (
        "docs/config.md is stale: run python -m megatron_hapo.config --update-doc docs/config.md"
    )


def test_cli_help_config(capsys):
    assert main(["--help-config"]) == 0
    assert "reward.call_timeout_s" in capsys.readouterr().out


def test_hapo_train_help_config(capsys):
    from megatron_hapo.cli import train_main

    train_main(["--help-config"])
    assert "data.dedup: bool = false" in capsys.readouterr().out


def test_cli_dry_run_prints_resolved_yaml(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert (
        main([str(CONFIGS / "cpu_demo.yaml"), "trainer.total_steps=2", "--world-size", "1", "--no-env-check"])
        == 0
    )
    out = capsys.readouterr().out
    assert "total_steps: 2" in out and "run_dir: runs/cpu_demo" in out


def test_cli_dry_run_reports_problems(capsys, write):
    bad = write("bad.yaml", "defaults: " + str(CONFIGS / "cpu_demo.yaml") + "\noptim: {lrr: 1}\n")
    assert main([str(bad), "--no-env-check"]) == 2
    err = capsys.readouterr().err
    assert "optim.lrr" in err and "did you mean 'optim.lr'" in err and str(bad) in err
