"""What content identities cost: a first full hash against an indexed re-hash, and the hashes.

Run: ``.venv/bin/python -m benchmarks.bench_identity`` (short: SmolLM2-135M-Instruct's GGUF and,
if converted, its Hugging Face folder; sha256 against blake2b in memory). ``--big-gb 2.5`` adds a
multi-GB file of random bytes written to ``--tmp-dir`` (default /tmp) and deleted afterwards.

Each case runs in a fresh digest index (a temporary ``$LINEAGE_LENS_CACHE``). *First* is
:func:`lineage_lens.identity.file_digests` with an empty index (every byte read and hashed; the
file's pages are dropped from the page cache first with ``posix_fadvise(DONTNEED)``, so it reads
from disk where the OS honours that); *indexed* is the same call after forgetting the loaded
index, as a new process would (the index file read back, then one ``stat`` per file). Both are
timed in the same run, so their ratio holds on a shared machine; the best of ``--repeat`` runs
counts. Files younger than :data:`lineage_lens.identity.RACY_WINDOW_NS` are not remembered, so the
script waits that long after writing the big file.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from lineage_lens import identity
from lineage_lens.fileio import cache_dir


def drop_page_cache(paths: Sequence[Path]) -> None:
    """Ask the OS to drop the files' cached pages (a no-op where unsupported)."""
    for p in paths:
        if hasattr(os, "posix_fadvise"):
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def time_case(files: Sequence[Path], repeat: int) -> dict[str, float]:
    """Best first-hash and indexed times of ``files`` in fresh indexes."""
    size = sum(f.stat().st_size for f in files)
    first, indexed = [], []
    old = os.environ.get("LINEAGE_LENS_CACHE")
    try:
        for _ in range(repeat):
            with tempfile.TemporaryDirectory(prefix="bench_identity_") as root:
                os.environ["LINEAGE_LENS_CACHE"] = root
                identity.forget_digest_indexes()
                drop_page_cache(files)
                t0 = time.perf_counter()
                digests = identity.file_digests(files)
                first.append(time.perf_counter() - t0)
                identity.forget_digest_indexes()  # as a new process: load the index file
                t0 = time.perf_counter()
                again = identity.file_digests(files)
                indexed.append(time.perf_counter() - t0)
                assert again == digests
    finally:
        if old is None:
            os.environ.pop("LINEAGE_LENS_CACHE", None)
        else:
            os.environ["LINEAGE_LENS_CACHE"] = old
        identity.forget_digest_indexes()
    t_first, t_indexed = min(first), min(indexed)
    return {
        "bytes": size,
        "files": len(files),
        "first_s": t_first,
        "indexed_s": t_indexed,
        "first_mb_s": size / 1e6 / t_first,
        "ratio": t_indexed / t_first,
    }


def hash_speeds(n_mib: int = 256) -> dict[str, float]:
    """MB/s of each hash over ``n_mib`` MiB in memory (best of 3)."""
    buf = os.urandom(n_mib << 20)
    out = {}
    makers = {"sha256": hashlib.sha256, "blake2b": hashlib.blake2b}
    if importlib.util.find_spec("xxhash") is not None:  # only to compare; not a dependency
        import xxhash

        makers["xxh3_128 (xxhash)"] = xxhash.xxh3_128
    for name, make in makers.items():
        best = float("inf")
        for _ in range(3):
            h = make()
            t0 = time.perf_counter()
            h.update(buf)
            h.digest()
            best = min(best, time.perf_counter() - t0)
        out[name] = len(buf) / 1e6 / best
    return out


def write_big_file(folder: Path, gb: float) -> Path:
    """A file of ``gb`` GB of random bytes in ``folder``."""
    fd, name = tempfile.mkstemp(dir=folder, prefix="bench_identity_", suffix=".bin")
    chunk = os.urandom(64 << 20)  # repeated: cheap to write, still incompressible per chunk
    left = int(gb * 1e9)
    with os.fdopen(fd, "wb") as fh:
        while left > 0:
            fh.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
    return Path(name)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=2, help="runs per case (the best counts)")
    ap.add_argument("--big-gb", type=float, default=0.0, help="also a file of this many GB")
    ap.add_argument("--tmp-dir", default="/tmp", help="where the big file is written")
    args = ap.parse_args(argv)

    from lineage_lens.models import packaged_model_path

    cases: dict[str, list[Path]] = {}
    gguf = packaged_model_path("smollm2-135m-instruct")
    cases[f"SmolLM2-135M-Instruct GGUF ({gguf.name})"] = [gguf]
    converted = cache_dir() / "gguf" / f"{gguf.stem}-{identity.hash_file(gguf)}"  # models' name
    if converted.is_dir():
        files = [p for _, p in identity.model_files(converted)]
        cases[f"SmolLM2-135M-Instruct converted HF folder ({len(files)} files)"] = files
    big = None
    try:
        if args.big_gb > 0:
            big = write_big_file(Path(args.tmp_dir), args.big_gb)
            time.sleep(identity.RACY_WINDOW_NS / 1e9 + 0.5)  # old enough to be remembered
            cases[f"random bytes, {args.big_gb:g} GB ({args.tmp_dir})"] = [big]
        rows = {name: time_case(files, args.repeat) for name, files in cases.items()}
    finally:
        if big is not None:
            big.unlink()
    speeds = hash_speeds()
    load = os.getloadavg()
    cmd = "`.venv/bin/python -m benchmarks.bench_identity" + (
        f" --big-gb {args.big_gb:g}`" if args.big_gb else "`"
    )
    lines = [
        f"Command: {cmd} (best of {args.repeat}; {platform.machine()}, {os.cpu_count()} cores, "
        f"load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}).",
        "",
        "| input | size (MB) | first hash (s) | first hash (MB/s) | indexed re-hash (s) "
        "| indexed / first |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['bytes'] / 1e6:,.1f} | {r['first_s']:.3f} | {r['first_mb_s']:,.0f} "
            f"| {r['indexed_s']:.4f} | {r['ratio']:.5f} |"
        )
    lines += ["", "| hash (256 MiB in memory) | MB/s |", "|---|---|"]
    lines += [f"| {name} | {mb_s:,.0f} |" for name, mb_s in speeds.items()]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
