"""Path rules found before any work starts (issue 17, bug 8): a data file the loader cannot read, a
run directory that is an existing file."""

from __future__ import annotations

from megatron_hapo.config import collect_issues
from megatron_hapo.config.loader import compose

from .conftest import probe


def _issues(*overrides):
    loaded = compose(None, ["model.hf_path=m", *overrides])
    return collect_issues(loaded.cfg, world_size=1, origins=loaded.origins, probe=probe())


def test_a_csv_data_file_is_named_with_the_formats_the_loader_reads(tmp_path, data_file):
    csv = tmp_path / "train.csv"
    csv.write_text("prompt,answer\n1+1?,2\n")
    found = [i for i in _issues(f"data.train_files=[{data_file},{csv}]") if i.key.startswith("data.")]
    assert len(found) == 1 and found[0].key == "data.train_files[1]"
    assert "unknown data format '.csv'" in found[0].message and ".parquet, .jsonl" in found[0].message


def test_a_run_dir_that_is_a_file(tmp_path, data_file):
    f = tmp_path / "taken"
    f.write_text("x")
    for run_dir in (f, f / "sub"):
        found = [i for i in _issues(f"data.train_files=[{data_file}]", f"trainer.run_dir={run_dir}")
                 if i.key == "trainer.run_dir"]  # fmt: skip
        assert len(found) == 1 and f"{f} is a" in found[0].message and "not a directory" in found[0].message
        assert "command line (trainer.run_dir=" in found[0].source
    assert not [i for i in _issues(f"data.train_files=[{data_file}]", f"trainer.run_dir={tmp_path}/new")
                if i.key == "trainer.run_dir"]  # fmt: skip
