"""A lineage report of the zoo, serial vs on a local Ray cluster, in one run (issue 27).

Run: ``.venv/bin/python -m benchmarks.bench_cluster [--workers 2 --n-probe 40 --out FILE]``.

Builds (or reuses) the zoo's tiny family (profile ``test``), then runs the same report of
``base`` -> ``instruct``, ``vlm`` with ``control`` (the zoo's world probing items, POPE on the
``vlm``'s scene set) twice, each from an empty step cache: serially
in this process, and with ``executor="ray"`` on a local cluster of ``--workers`` CPUs (the cluster
is started before the clock starts; its start-up time is reported apart). Reported: wall times,
their ratio, and whether every table of the two reports is identical.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from lineage_lens.cluster import ray_session
from lineage_lens.fileio import atomic_open
from lineage_lens.report import ReportPlan, lineage_report
from lineage_lens.zoo import build_zoo, world_probe_examples

TABLES = ("scores.csv", "inheritance.csv", "drift.csv", "cka.csv", "evidence.csv", "gating.csv")


def _report(zoo, out: Path, plan: ReportPlan, **kwargs):
    # the zoo's own probing data (HaluEval prompts exceed the tiny models' 256-token context) and
    # its POPE set: the text members' POPE sweeps are skipped, the vlm is gated
    examples = world_probe_examples(zoo.world("base"), n=plan.n_probe, seed=0)
    return lineage_report(
        zoo.path("base"),
        [zoo.path("instruct"), zoo.path("vlm")],
        controls=[zoo.path("control")],
        names=["base", "instruct", "vlm", "control"],
        out=out,
        plan=plan,
        data=examples,
        evaluation="pope",
        eval_dir=zoo.path("vlm") / "eval",
        progress=False,
        command="bench_cluster",
        **kwargs,
    )


def _same(a: Path, b: Path) -> bool:
    return all(pd.read_csv(a / name).equals(pd.read_csv(b / name)) for name in TABLES)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--n-probe", type=int, default=40)
    ap.add_argument("--eval-rows", type=int, default=16)
    ap.add_argument("--out", default="benchmarks/cluster.md")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    zoo = build_zoo(profile="test", threads=1)
    plan = ReportPlan(
        n_probe=args.n_probe,
        folds=5,
        batch_size=16,
        eval_rows=args.eval_rows,
        control_seeds=(0, 1),
        n_resamples=1000,
        n_evidence=16,
    )
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        serial = _report(zoo, Path(tmp) / "serial", plan)
        t_serial = time.perf_counter() - t0
        t0 = time.perf_counter()
        with ray_session(num_cpus=args.workers):
            t_start = time.perf_counter() - t0
            t0 = time.perf_counter()
            _report(zoo, Path(tmp) / "ray", plan, executor="ray")
            t_ray = time.perf_counter() - t0
        same = _same(Path(tmp) / "serial", Path(tmp) / "ray")
    load = os.getloadavg()
    lines = [
        "# Lineage report of the zoo: serial vs a local Ray cluster",
        "",
        f"Command: `.venv/bin/python -m benchmarks.bench_cluster --workers {args.workers} "
        f"--n-probe {args.n_probe} --eval-rows {args.eval_rows}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch threads "
        f"{torch.get_num_threads()} (serial); load average at the end "
        f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}.",
        "",
        "Report: base -> instruct, vlm; control (4 models; world probing items, POPE on the vlm); "
        f"{len(serial.meta['computed'])} steps computed in each run from an empty cache.",
        "",
        "| run | wall time (s) | ratio to serial |",
        "|---|---|---|",
        f"| serial (one process) | {t_serial:.1f} | 1.00 |",
        f"| Ray, {args.workers} CPU workers | {t_ray:.1f} | {t_ray / t_serial:.2f} |",
        "",
        f"Ray cluster start-up (not in the time above): {t_start:.1f} s. "
        f"Every table identical to the serial report: {'yes' if same else 'NO'}.",
        "",
    ]
    path = Path(args.out)
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))
    with atomic_open(path.with_suffix(".json"), "w", encoding="utf-8") as fh:
        json.dump(
            {
                "serial_s": t_serial,
                "ray_s": t_ray,
                "ray_start_s": t_start,
                "workers": args.workers,
                "identical": same,
                "steps": len(serial.meta["computed"]),
            },
            fh,
            indent=1,
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
