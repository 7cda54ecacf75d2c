"""Beyond one process: a lineage report on a local Ray cluster of 2 CPU workers equals the serial
report, a worker that dies is retried, and the serial default never imports Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lineage_lens.errors import ConfigError
from lineage_lens.report import lineage_report
from tests.report import test_report
from tests.report.test_report import PLAN

#: The report tests' tiny family (ancestor, two noisy descendants, an unrelated control).
family = test_report.family

pytestmark = pytest.mark.model

#: Every CSV a report writes (compared cell by cell between the serial and the Ray run).
TABLES = tuple(f for f in test_report.FILES if f.endswith(".csv"))


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster with 2 CPUs, shared by this module's tests."""
    from lineage_lens.cluster import ray_session

    with ray_session(num_cpus=2) as ray:
        yield ray


def _evaluator():
    from lineage_lens.report import PROFILES  # noqa: F401  (the report's own evaluator)
    from lineage_lens.report.run import make_evaluator, report_examples

    examples, _, _ = report_examples("halueval", PLAN.n_probe, PLAN.seed)
    ids = sorted({ex.source_id for ex in examples})
    return make_evaluator("halueval", PLAN, exclude_ids=ids, eval_dir=None)[0]


def _report(family, out: Path, **kwargs):
    return lineage_report(
        family["anc"],
        [family["ft"], family["ft2"]],
        controls=[family["ctrl"]],
        names=["anc", "ft", "ft2", "ctrl"],
        out=out,
        plan=PLAN,
        progress=False,
        command="lineage-lens report (test)",
        **kwargs,
    )


def _statistics(out: Path) -> dict:
    stats = json.loads((out / "statistics.json").read_text())
    # which steps this run computed or reused, and the folders it wrote, are the run's own
    for key in ("computed", "reused", "activations", "out"):
        stats["meta"].pop(key, None)
    return stats


def _comparable_report_md(out: Path) -> list[str]:
    # the step counts differ by design (a retried task reuses what its dead attempt published)
    return [
        line
        for line in (out / "REPORT.md").read_text().splitlines()
        if "Steps computed in this run" not in line
    ]


def test_ray_report_equals_serial_and_survives_a_dying_worker(family, ray_cluster, tmp_path):
    from lineage_lens.testing import DieOnceEvaluator

    serial = _report(family, tmp_path / "serial", evaluator=_evaluator())
    marker = tmp_path / "died"
    on_ray = _report(
        family,
        tmp_path / "ray",
        evaluator=DieOnceEvaluator(_evaluator(), marker),
        executor="ray",
        max_retries=2,
    )
    # the ancestor's task really died once (in its gating step) and was retried
    assert marker.is_file()
    import os

    assert int(marker.read_text()) != os.getpid()
    for name in TABLES:
        a = pd.read_csv(tmp_path / "serial" / name)
        b = pd.read_csv(tmp_path / "ray" / name)
        pd.testing.assert_frame_equal(a, b, check_exact=True, obj=name)
    assert _statistics(tmp_path / "serial") == _statistics(tmp_path / "ray")
    assert _comparable_report_md(tmp_path / "serial") == _comparable_report_md(tmp_path / "ray")
    assert serial.skipped == on_ray.skipped
    assert set(on_ray.scores) == {"anc", "ft", "ft2", "ctrl"}
    # every step is accounted for exactly once: computed by a live task or reused after a retry
    assert sorted(serial.meta["computed"]) == sorted(
        on_ray.meta["computed"] + on_ray.meta["reused"]
    )
    # the retried ancestor reused its published Truth Scores, and recomputed its gating sweep
    assert "anc: Truth Scores (text)" in on_ray.meta["reused"]
    assert "anc: gating sweep" in on_ray.meta["computed"]


def test_ray_rerun_computes_nothing(family, ray_cluster, tmp_path):
    _report(family, tmp_path / "out", executor="ray")
    again = _report(family, tmp_path / "out", executor="ray")
    assert again.meta["computed"] == []
    assert len(again.meta["reused"]) > 0


def test_ray_task_errors_are_the_library_errors(family, ray_cluster, tmp_path):
    """A step that fails in a task (here: an evaluation whose rows are missing) raises the same
    LineageLensError as the serial run, not a wrapped Ray error, and is not retried."""
    from lineage_lens.errors import DataError
    from lineage_lens.evals import HaluEvalJudgement

    bad = HaluEvalJudgement(rows=[], limit=4)
    with pytest.raises(DataError) as serial_err:
        _report(family, tmp_path / "serial", evaluator=bad)
    with pytest.raises(DataError) as ray_err:
        _report(family, tmp_path / "ray", evaluator=bad, executor="ray")
    assert str(ray_err.value) == str(serial_err.value)


def test_unknown_executor_and_bad_retries_are_config_errors(family, tmp_path):
    with pytest.raises(ConfigError, match="unknown executor 'dask'"):
        _report(family, tmp_path / "a", executor="dask")
    from lineage_lens.cluster import task_options

    with pytest.raises(ConfigError, match="max_retries"):
        task_options(None, -1)
    assert task_options("cuda:0")["num_gpus"] == 1
    assert task_options("cpu")["num_gpus"] == 0


def test_missing_ray_is_one_clear_error(family, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'lineage-lens\[cluster\]'"):
        _report(family, tmp_path / "a", executor="ray")
    assert not (tmp_path / "a").exists()  # refused before any work


def test_serial_report_never_imports_ray(family, tmp_path):
    code = f"""
import sys
from lineage_lens.report import ReportPlan, lineage_report
plan = ReportPlan(n_probe=8, folds=2, batch_size=8, eval_rows=4, control_seeds=(0,),
                  n_resamples=100, n_evidence=4)
lineage_report({str(family["anc"])!r}, [{str(family["ft"])!r}], out={str(tmp_path / "o")!r},
               plan=plan, progress=False)
assert "ray" not in sys.modules, "the serial report imported ray"
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        (["--executor", "spark"], "unknown executor 'spark'"),
        (["--address", "127.0.0.1:6379"], "--address names a Ray cluster: pass it with --executor"),
    ],
)
def test_cli_report_executor_options(extra, pattern, tmp_path, capsys, monkeypatch):
    from tests.test_reliability import assert_one_line_error, run_cli

    argv = ["report", "--ancestor", "a", "--descendant", "b", "--out", str(tmp_path / "o")]
    code, _, err = run_cli(argv + extra, capsys, monkeypatch)
    assert_one_line_error(code, err, pattern)


def _probe_examples(n: int = 24):
    from lineage_lens.data import ProbeExample

    words = ["cat", "dog", "car", "tree", "house", "ball", "bird", "fish", "cup", "book"]
    out = []
    for i in range(n // 2):
        context = f"the {words[i % 10]} sat near the {words[(i * 3) % 10]} " * (1 + i % 3)
        q = f"where is the {words[i % 10]}?"
        out.append(ProbeExample(context, q, f"near the {words[(i * 3) % 10]}", 1, f"r{i}"))
        out.append(ProbeExample(context, q, f"near the {words[(i * 7 + 1) % 10]}", 0, f"r{i}"))
    return out


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gqa", "tiny_llava"])
def test_data_parallel_capture_equals_one_process(arch, request, ray_cluster, tmp_path):
    """workers=2: each Ray worker loads the model, captures every other batch into the one
    memmap; the result equals the single-process capture (same batches, same padding)."""
    import numpy as np
    import torch

    from lineage_lens.activations import HeadActivations
    from lineage_lens.capture import collect_head_activations

    model = request.getfixturevalue(arch)
    examples = _probe_examples()
    kw = {"batch_size": 4, "dtype": torch.float32, "progress": False}
    single = collect_head_activations(model, examples, **kw)
    out = tmp_path / "acts"
    par = collect_head_activations(model, examples, out=out, workers=2, **kw)
    np.testing.assert_allclose(par.acts, single.acts, rtol=0, atol=1e-6)
    assert par.source_ids == single.source_ids
    np.testing.assert_array_equal(par.labels, single.labels)
    assert not list(out.glob("shard-*.json"))  # merged into progress.json, then removed
    progress = json.loads((out / "progress.json").read_text())
    assert progress["done"] == progress["total"] == 6
    again = HeadActivations.load(out)
    np.testing.assert_array_equal(np.asarray(again.acts), np.asarray(par.acts))


def test_a_shard_batch_that_fails_its_checksum_is_captured_again(tiny_llama, tmp_path, caplog):
    """A shard's rows changed after it recorded them (a torn write, another writer): the
    driver's merge stops at that batch and captures it and the rest itself."""
    import numpy as np
    import torch

    from lineage_lens.capture import capture_shard_task, collect_head_activations
    from lineage_lens.models import load_arguments

    examples = _probe_examples()
    kw = {"batch_size": 4, "dtype": torch.float32}
    single = collect_head_activations(tiny_llama, examples, progress=False, **kw)
    out = tmp_path / "acts"
    options = {
        "position": "answer_last",
        "prompt_template": None,
        "out": out,
        "padding_side": "right",
        "prepend_bos": None,
        "sort_by_length": True,
        "stop_early": True,
        "share_prefix": True,
        "condition": None,
        **kw,
    }
    for i in range(2):  # both shards in this process
        capture_shard_task(load_arguments(tiny_llama), examples, options, (i, 2))
    shard0 = json.loads((out / "shard-0-of-2.json").read_text())
    assert sorted(shard0["sha256"], key=int) == ["0", "2", "4"]
    assert json.loads((out / "progress.json").read_text())["done"] == 0
    acts = np.lib.format.open_memmap(out / "acts.npy", mode="r+")
    acts[:] = 0  # the rows the shards wrote are lost (a torn write, another writer)
    acts.flush()
    del acts
    with caplog.at_level("WARNING"):
        res = collect_head_activations(tiny_llama, examples, out=out, progress=False, **kw)
    assert "does not match its shard's checksum" in caplog.text
    np.testing.assert_allclose(res.acts, single.acts, rtol=0, atol=1e-6)


def test_data_parallel_capture_needs_out_and_load_model(tiny_llama, tmp_path):
    from lineage_lens.capture import collect_head_activations

    examples = _probe_examples(4)
    with pytest.raises(ConfigError, match="pass out="):
        collect_head_activations(tiny_llama, examples, workers=2, progress=False)
    with pytest.raises(ConfigError, match="workers must be a positive integer"):
        collect_head_activations(tiny_llama, examples, workers=0, progress=False)


def test_a_session_gives_the_callers_signal_handlers_back():
    """ray.init installs SIGTERM/SIGINT handlers in the driver; after ray_session the caller's own
    are back (a fresh process: the module's cluster is already connected in this one)."""
    script = (
        "import signal\n"
        "from lineage_lens.cluster import ray_session\n"
        "def mine(*_): pass\n"
        "signal.signal(signal.SIGTERM, mine)\n"
        "before = signal.getsignal(signal.SIGINT)\n"
        "with ray_session(num_cpus=1):\n"
        "    pass\n"
        "assert signal.getsignal(signal.SIGTERM) is mine, signal.getsignal(signal.SIGTERM)\n"
        "assert signal.getsignal(signal.SIGINT) is before\n"
        "print('restored')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "restored" in out.stdout
