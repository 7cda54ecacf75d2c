"""Build the zoo for a profile and record the measured build time of each member.

Run: ``.venv/bin/python -m benchmarks.bench_zoo --profile test --out benchmarks/zoo.md``

Members already built (same content address) are reused and reported with their recorded build
time; pass ``--fresh DIR`` to build into an empty directory instead.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from lineage_lens.fileio import atomic_open
from lineage_lens.zoo import build_zoo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", default="test")
    ap.add_argument("--zoo-dir", default=None, help="zoo directory (default: the cache)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/zoo.md")
    args = ap.parse_args()
    t0 = time.perf_counter()
    zoo = build_zoo(args.zoo_dir, args.profile, threads=args.threads)
    total = time.perf_counter() - t0
    load = os.getloadavg()
    lines = [
        f"# Zoo build times (profile `{args.profile}`)",
        "",
        f"Command: `.venv/bin/python -m benchmarks.bench_zoo --profile {args.profile}"
        + (f" --threads {args.threads}" if args.threads else "")
        + "`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch threads "
        f"{args.threads or torch.get_num_threads()}; load average at the end "
        f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} (cores shared with other jobs: pessimistic).",
        "",
        "| member | parent | build wall time (s) | final losses | checks at build time |",
        "|---|---|---|---|---|",
    ]
    for m in zoo.members.values():
        losses = ", ".join(f"{k} {v:.3f}" for k, v in m.losses.items())
        checks = ", ".join(f"{k} {v:.2f}" for k, v in m.checks.items())
        lines.append(
            f"| {m.name} | {m.parent or '-'} | {m.wall_time_s:.1f}"
            f"{' (recorded, reused)' if m.reused else ''} | {losses} | {checks} |"
        )
    lines += ["", f"This run's wall time (including reuse and model loading): {total:.1f} s.", ""]
    path = Path(args.out)
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
