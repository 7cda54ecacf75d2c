"""Interrupted builds leave no temporary directory (issue 20, item 7).

A zoo build and a GGUF dequantisation are started in a subprocess with a slow fake build step on
the real code path (``build_zoo`` / ``gguf_to_hf_dir``); once the step has written into its
temporary directory the subprocess is sent SIGTERM or SIGINT (it must clean up and exit) or
SIGKILL (its directory stays, and the next build sweeps it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from lineage_lens.fileio import (
    sigterm_as_exit,
    sweep_stale_tmp_dirs,
    tmp_build_dir,
    tmp_prefix,
)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

#: A zoo build whose only member's builder writes a file and then waits to be interrupted.
ZOO_SCRIPT = """
import sys, time
from pathlib import Path
import lineage_lens.zoo as zoo

def slow(recipe, parent, out):
    (out / "model.safetensors").write_bytes(b"0" * 4096)
    print("BUILDING", out, flush=True)
    time.sleep(120)
    return {}

zoo.member_builders = lambda: {"tiny_base": slow}
zoo.build_zoo(Path(sys.argv[1]), "test", members=["base"])
print("FINISHED", flush=True)
"""

#: A GGUF conversion whose tokenizer step writes nothing and waits (the real file is not read).
GGUF_SCRIPT = """
import sys, time
from pathlib import Path
import transformers
from lineage_lens.models import gguf_to_hf_dir

def slow(path, **kw):
    print("BUILDING", flush=True)
    time.sleep(120)

transformers.AutoTokenizer.from_pretrained = slow
gguf_to_hf_dir(Path(sys.argv[1]))
print("FINISHED", flush=True)
"""


def _default_signals() -> None:
    """In the child before exec: SIGINT and SIGTERM as an interactive shell leaves them. A test
    run started in the background of a non-interactive shell (``make test &``, ``nohup``)
    inherits SIGINT ignored, and a Python started with SIGINT ignored never turns it into
    KeyboardInterrupt, so the Ctrl-C this file sends would be lost."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _start(script: str, arg: Path, cache: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "LINEAGE_LENS_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), str(arg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=_default_signals,
    )


def _wait_building(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("BUILDING"):
        proc.kill()
        _, err = proc.communicate(timeout=30)
        pytest.fail(f"the build did not start: {line!r}\n{err[-3000:]}")
    return line


def _tmp_dirs(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(".")] if folder.is_dir() else []


@pytest.mark.parametrize(
    ("sig", "exit_code"), [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, -signal.SIGINT)]
)
def test_zoo_build_interrupted_leaves_no_temporary_directory(tmp_path, sig, exit_code):
    root = tmp_path / "zoo"
    proc = _start(ZOO_SCRIPT, root, tmp_path / "cache")
    line = _wait_building(proc)
    (building,) = _tmp_dirs(root)  # the member is being built in its temporary directory
    assert (building / "model.safetensors").is_file() and str(building) in line
    assert f".{proc.pid}." in building.name  # the owner is in the name
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == exit_code, err[-3000:]
    assert "FINISHED" not in out
    assert _tmp_dirs(root) == []
    assert not (root / "manifest.json").exists()


def test_gguf_conversion_terminated_leaves_no_temporary_directory(tmp_path):
    gguf = tmp_path / "toy.Q4_0.gguf"
    gguf.write_bytes(b"GGUF" + bytes(1000))
    cache = tmp_path / "cache"
    proc = _start(GGUF_SCRIPT, gguf, cache)
    _wait_building(proc)
    (building,) = _tmp_dirs(cache / "gguf")
    assert building.name.startswith(".toy.Q4_0-") and f".{proc.pid}." in building.name
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert _tmp_dirs(cache / "gguf") == []


def test_a_killed_build_is_swept_by_the_next_one(tmp_path):
    """SIGKILL cannot be handled: the directory stays, and the next build removes it."""
    from lineage_lens.zoo import build_zoo

    root = tmp_path / "zoo"
    proc = _start(ZOO_SCRIPT, root, tmp_path / "cache")
    _wait_building(proc)
    proc.kill()
    proc.communicate(timeout=60)
    (stale,) = _tmp_dirs(root)
    assert (stale / "model.safetensors").is_file()
    # another process's build in progress (alive: this one) and a foreign directory are kept
    live = root / f"{tmp_prefix('other-123')}abc"
    live.mkdir()
    foreign = root / ".other-456.12345678"
    foreign.mkdir()

    import lineage_lens.zoo as zoo

    def quick(recipe, parent, out):
        (out / "model.safetensors").write_bytes(b"1")
        return {}

    original = zoo.member_builders
    zoo.member_builders = lambda: {"tiny_base": quick}
    try:
        built = build_zoo(root, "test", members=["base"])
    finally:
        zoo.member_builders = original
    assert (built.path("base") / "model.safetensors").read_bytes() == b"1"
    assert sorted(_tmp_dirs(root)) == sorted([live, foreign])


def test_sweep_removes_only_dead_processes_of_this_host(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = tmp_prefix("x").split(".")[3]
    stale = tmp_path / f".m-1.tmp.{host}.{dead.pid}.abc_12"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "w.bin").write_bytes(b"0")
    mine = tmp_path / f".m-2.tmp.{host}.{os.getpid()}.abc_12"
    other_host = tmp_path / f".m-3.tmp.{host}x.{dead.pid}.abc_12"
    unnamed = tmp_path / f"m-4.tmp.{host}.{dead.pid}.abc_12"  # not hidden: not ours
    for path in (mine, other_host, unnamed):
        path.mkdir()
    assert sweep_stale_tmp_dirs(tmp_path) == [stale]
    assert not stale.exists()
    assert all(p.is_dir() for p in (mine, other_host, unnamed))
    assert sweep_stale_tmp_dirs(tmp_path / "missing") == []


def test_tmp_build_dir_is_removed_on_error_and_restores_the_handler(tmp_path):
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    with pytest.raises(RuntimeError), tmp_build_dir(tmp_path, "member") as tmp:
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        (tmp / "w.bin").write_bytes(b"0")
        raise RuntimeError("boom")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert list(tmp_path.iterdir()) == []
    # a program's own handler stays in charge
    own = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        mine = signal.getsignal(signal.SIGTERM)
        with sigterm_as_exit():
            assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, own)


def test_tmp_build_dir_works_off_the_main_thread(tmp_path):
    """signal.signal only works in the main thread: elsewhere no handler is installed."""
    seen: list[object] = []

    def build() -> None:
        with tmp_build_dir(tmp_path, "member") as tmp:
            seen.append(tmp.is_dir())

    thread = threading.Thread(target=build)
    thread.start()
    thread.join()
    assert seen == [True]
    assert list(tmp_path.iterdir()) == []
