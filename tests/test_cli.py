"""hapo-train's errors look like config errors (issue 17, bug 8): one line ``hapo-train: <what, where,
what to do>``, rank 0 only, the traceback behind ``--verbose`` / HAPO_VERBOSE=1; the console routing of
``megatron_hapo.console``."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from megatron_hapo import console
from megatron_hapo.cli import report_errors
from megatron_hapo.data import DataError
from tests.torchrun_utils import REPO_ROOT


def _raise(exc: Exception):
    def fn():
        raise exc

    return fn


@pytest.fixture
def quiet_env(monkeypatch):
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    monkeypatch.delenv("RANK", raising=False)


def test_a_project_error_is_one_line_on_rank_0(quiet_env, capsys):
    err = DataError(
        "d.jsonl row 3: line 4: not UTF-8 (byte 0xff at column 9). Fix the row, or set data.bad_rows=skip"
    )
    assert report_errors("hapo-train", _raise(err)) == 1
    out = capsys.readouterr()
    assert out.err == f"hapo-train: {err}\n" and out.out == ""


def test_other_ranks_exit_quietly_and_verbose_shows_the_traceback(quiet_env, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    assert report_errors("hapo-train", _raise(DataError("bad"))) == 1
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv(console.VERBOSE_ENV, "1")
    assert report_errors("hapo-train", _raise(DataError("bad"))) == 1
    err = capsys.readouterr().err
    assert err.count("Traceback") == 1 and err.endswith("hapo-train: bad\n")


def test_a_bug_keeps_its_traceback(quiet_env):
    with pytest.raises(ZeroDivisionError):
        report_errors("hapo-train", _raise(ZeroDivisionError("bug")))


def _cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "megatron_hapo.trainer", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT), **(env or {})),
    )  # fmt: skip


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["trainer.lr=1"], "optim.lr"),
        (["data.mini_batch_size=3"], "mini_batch_size"),
        (["algorithm.loss.clip_low=1.5"], "clip_low"),
    ],
)
def test_bad_config_rejected_before_any_work(tmp_path, overrides, message):
    run_dir = tmp_path / "run"
    proc = _cli("--config", "examples/configs/tiny_cpu.yaml", f"trainer.run_dir={run_dir}", *overrides)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not run_dir.exists()  # nothing was started or written


def test_help_config_lists_keys():
    proc = _cli("--help-config")
    assert proc.returncode == 0 and "algorithm.loss.clip_high" in proc.stdout


def test_csv_data_file_and_run_dir_that_is_a_file(tmp_path):
    csv, taken = tmp_path / "train.csv", tmp_path / "taken"
    csv.write_text("prompt,answer\n")
    taken.write_text("")
    proc = _cli("--config", "examples/configs/cpu_demo.yaml", f"model.hf_path={tmp_path}",
                f"data.train_files=[{csv}]", f"trainer.run_dir={taken}")  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("hapo-train: invalid configuration")
    assert any(line.startswith("  - data.train_files[0]: ") and "'.csv'" in line for line in lines)
    assert any(line.startswith("  - trainer.run_dir: ") and "is an existing file" in line for line in lines)


def test_the_console_filter_and_the_log_file(tmp_path, quiet_env):
    def ours():
        return [h for h in logging.getLogger().handlers if getattr(h, "_hapo_console", False)]

    with console.logging_to(tmp_path, "INFO") as path:
        (handler,) = [h for h in ours() if not isinstance(h, logging.FileHandler)]
        passes = lambda name, level, **extra: handler.filter(  # noqa: E731
            logging.LogRecord(name, level, __file__, 1, "m", (), None)
            if not extra
            else logging.makeLogRecord({"name": name, "levelno": level, **extra})
        )
        assert passes("megatron_hapo.trainer", logging.WARNING) and not passes(
            "megatron_hapo.trainer", logging.INFO
        )
        assert not passes("megatron.core", logging.WARNING) and passes("sglang", logging.ERROR)
        assert not passes("hapo-train", logging.ERROR, hapo_file_only=True)
        logging.getLogger("megatron.core.test").info("kept in the file")
        import warnings

        warnings.warn("a python warning", UserWarning, stacklevel=1)
        for h in logging.getLogger().handlers:
            h.flush()
        text = path.read_text()
        assert (
            path == tmp_path / "logs" / "rank0.log"
            and "kept in the file" in text
            and "a python warning" in text
        )
    # an in-process caller (the demo test) keeps no handler of the run's: nothing more reaches its file
    assert ours() == []
    logging.getLogger("megatron_hapo.test").warning("after the run")
    assert "after the run" not in path.read_text()


def test_fds_to_catches_child_processes_and_restores(tmp_path, capfd):
    log = tmp_path / "engine.log"
    with console.fds_to(log):
        child = subprocess.Popen([sys.executable, "-c", "import sys, time; time.sleep(0.5); print('child late');"
                                  "print('child err', file=sys.stderr)"])  # fmt: skip
    print("parent after")
    child.wait(timeout=60)
    assert "parent after" in capfd.readouterr().out
    assert "child late" in log.read_text() and "child err" in log.read_text()


def test_benign_warnings_are_filtered_by_message_and_package():
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        console.filter_benign_warnings()
        warnings.warn_explicit("Apex is not installed. Falling back to Torch Norm", UserWarning, "x.py", 1,
                               module="megatron.core.models.backends")  # fmt: skip
        warnings.warn_explicit("Apex is not installed. Falling back to Torch Norm", UserWarning, "x.py", 1,
                               module="mypackage")  # fmt: skip
    assert [str(w.message) for w in caught] == ["Apex is not installed. Falling back to Torch Norm"]


def test_a_failing_engine_process_shows_its_last_words_on_the_console(tmp_path):
    """With the engine's output in a log file, SGLang's SIGQUIT path (a dead scheduler kills this process)
    would print nothing; the handler prints the log's tail first, then kills the tree as SGLang does."""
    log = tmp_path / "sglang.log"
    log.write_text(
        "".join(f"line {i}\n" for i in range(100)) + "RuntimeError: Cannot find any model weights\n"
    )
    code = (
        "import os, signal\n"
        "from megatron_hapo.console import EngineCrashReport\n"
        f"signal.signal(signal.SIGQUIT, EngineCrashReport({str(log)!r}, os.dup(2)))\n"
        "os.kill(os.getpid(), signal.SIGQUIT)\n"
        "import time; time.sleep(60)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))  # fmt: skip
    assert proc.returncode in (-9, 137), proc.stderr[-2000:]
    assert proc.stderr.startswith(f"SGLang engine process failed; the last lines of {log}:")
    assert "Cannot find any model weights" in proc.stderr and "line 50\n" not in proc.stderr


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--names", "X", "X"], "--names gives 'X' to several benchmark files: one name each"),
        (["--top-k", "0"], "top_k must be -1 (off) or at least 1, got 0"),
        (["--batch-prompts", "0"], "--batch-prompts must be at least 1, got 0"),
        (["--max-prompts", "0"], "--max-prompts must be at least 1, got 0"),
        (["--scorer-workers", "-1"], "--scorer-workers must be at least 0, got -1"),
        (["--score-timeout", "0"], "--score-timeout must be a positive number of seconds, got 0.0"),
        (["--reward-extra-modules", "no_such_pkg.scorers"], "--reward-extra-modules: module 'no_such_pkg.scorers' cannot be found on this Python's path (ModuleNotFoundError: No module named 'no_such_pkg')"),
        (["--run-dir", "{file}"], "--run-dir {file} is a file: give a directory (new or an evaluation's)"),
        (["--out", "{dir}"], "--out {dir} is a directory: give the JSON file's path, e.g. {dir}/results.json"),
    ],
)  # fmt: skip
def test_hapo_eval_refuses_arguments_that_cannot_work_before_reading_anything(
    extra, message, tmp_path, capsys
):
    """Each of these was a traceback, a failure after the engine's start, or a benchmark silently dropped."""
    from megatron_hapo.cli import eval as eval_cli

    (tmp_path / "file").write_text("")
    names = {"file": str(tmp_path / "file"), "dir": str(tmp_path)}
    argv = ["--model", str(tmp_path / "no_model"), "--benchmarks", "a.jsonl", "b.jsonl", *extra]
    assert eval_cli.main([a.format(**names) for a in argv]) == 2
    assert capsys.readouterr().err.strip() == f"hapo-eval: {message.format(**names)}"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--router-for", ""], "--router-for lists no server URL: give the rollout servers' comma-separated addresses"),
        (["--router-for", " , "], "--router-for lists no server URL"),
        (["--servers", "0"], "--servers must be at least 1, got 0"),
        (["--servers", "2", "--router-for", "http://a:30001"], "--servers starts servers, --router-for a router"),
        (["--port", "0"], "--port must be a TCP port (1-65535), got 0"),
    ],
)  # fmt: skip
def test_hapo_serve_refuses_arguments_that_cannot_work_before_reading_the_config(extra, message, capsys):
    """An empty --router-for (an unset variable) started servers in the router's place; --servers 0 and --port 0
    were replaced by the defaults."""
    from megatron_hapo.cli import serve

    assert serve.main(["--config", "no_such_config.yaml", *extra]) == 2
    assert capsys.readouterr().err.startswith(f"hapo-serve: {message}")


def test_hapo_convert_refuses_an_output_that_is_a_file_and_a_negative_tolerance(tmp_path, capsys):
    from megatron_hapo.cli import convert

    taken = tmp_path / "taken"
    taken.write_text("")
    assert convert.main(["hf-to-mcore", "--hf", str(tmp_path), "--out", str(taken)]) == 2
    assert f"--out {taken} is a file: give a directory" in capsys.readouterr().err
    assert convert.main(["verify", "--hf", str(tmp_path), "--mcore", str(tmp_path), "--atol", "-1"]) == 2
    assert "--atol must be >= 0 (0: the logits must match exactly), got -1.0" in capsys.readouterr().err
