"""The cost of a lineage report of N descendants x M examples on K workers, from measured
per-example timings (:mod:`benchmarks.bench_cost`); see ``docs/scale.md``.

Run: ``.venv/bin/python -m benchmarks.cost_model --timings benchmarks/cost_cpu.json
--descendants 50 --examples 584 --eval-rows 208 --workers 8 [--params 7e9 --layers 32 --heads 32
--d-head 128 --dtype-bytes 2]``.

The model (every assumption named):

* a forward pass is compute-bound, so capture and sweep time scale with the parameter count
  (2 x params FLOPs per token) at the measured tokens per example, on the hardware that measured
  the timings; a target with other parameters is scaled by ``params / measured params``;
* probing fits one Newton probe per head and fold: its time scales with examples x heads x
  d_head^2 (the Hessian of each probe);
* each model's steps run as one task on one worker (:func:`lineage_lens.report.lineage_report`
  with ``executor="ray"``): the ancestor first, then the descendants ``workers`` at a time;
* a descendant's sweep evaluates ``settings`` gate settings (ungated, inherited, own, and one
  per control seed) on every evaluation row; the ancestor's own-score sweep has
  ``ancestor_settings``;
* the pair steps (drift, CKA, statistics) are left out: they read checkpoints and cached
  activations and take seconds to minutes per pair;
* memory per worker: the weights at ``dtype_bytes`` per parameter plus the measured activation
  overhead (peak minus weights, on CUDA) scaled with the parameter count; with no CUDA peak
  measured, 20 % of the weights is assumed and said.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Estimate:
    """Hours (of one worker, and of wall time on ``workers``) and memory per worker."""

    capture_h: float
    probe_h: float
    sweep_h: float
    worker_hours: float
    wall_hours: float
    memory_gib: float
    memory_note: str

    def lines(self) -> list[str]:
        return [
            f"capture {self.capture_h:.2f} h, probes {self.probe_h:.2f} h, sweeps "
            f"{self.sweep_h:.2f} h (worker-hours, all models)",
            f"total {self.worker_hours:.2f} worker-hours; wall time {self.wall_hours:.2f} h",
            f"memory per worker {self.memory_gib:.1f} GiB ({self.memory_note})",
        ]


def estimate(
    timings: dict,
    *,
    descendants: int,
    examples: int,
    eval_rows: int,
    workers: int,
    settings: int = 6,
    ancestor_settings: int = 2,
    params: float | None = None,
    layers: int | None = None,
    heads: int | None = None,
    d_head: int | None = None,
    dtype_bytes: int = 4,
) -> Estimate:
    """The cost of a report of ``descendants`` (plus the ancestor) from ``timings``."""
    p_ratio = (params or timings["n_params"]) / timings["n_params"]
    n_heads = (layers or timings["n_layers"]) * (heads or timings["n_heads"])
    d_ratio = ((d_head or timings["d_head"]) / timings["d_head"]) ** 2
    capture = examples * timings["capture_s_per_example"] * p_ratio
    probe = examples * n_heads * timings["probe_s_per_example_head"] * d_ratio
    sweep_row = eval_rows * timings["sweep_s_per_row_setting"] * p_ratio
    ancestor = capture + probe + ancestor_settings * sweep_row
    descendant = capture + probe + settings * sweep_row
    models = descendants + 1
    worker_s = ancestor + descendants * descendant
    wall_s = ancestor + math.ceil(descendants / max(1, workers)) * descendant
    weights = (params or timings["n_params"]) * dtype_bytes
    peaks = [timings.get("peak_bytes_capture"), timings.get("peak_bytes_sweep")]
    peaks = [p for p in peaks if p]
    if peaks:
        overhead = (max(peaks) - timings["weight_bytes"]) / timings["weight_bytes"]
        note = f"weights + measured activation overhead {overhead:.0%}"
    else:
        overhead, note = 0.2, "weights + an assumed 20 % overhead (no CUDA peak measured)"
    return Estimate(
        capture_h=models * capture / 3600,
        probe_h=models * probe / 3600,
        sweep_h=(ancestor_settings + descendants * settings) * sweep_row / 3600,
        worker_hours=worker_s / 3600,
        wall_hours=wall_s / 3600,
        memory_gib=weights * (1 + max(overhead, 0.0)) / 2**30,
        memory_note=note,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--timings", default="benchmarks/cost_cpu.json")
    ap.add_argument("--descendants", type=int, default=50)
    ap.add_argument("--examples", type=int, default=584)
    ap.add_argument("--eval-rows", type=int, default=208)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--settings", type=int, default=6)
    ap.add_argument("--params", type=float, default=None)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--heads", type=int, default=None)
    ap.add_argument("--d-head", type=int, default=None)
    ap.add_argument("--dtype-bytes", type=int, default=4)
    args = ap.parse_args()
    timings = json.loads(Path(args.timings).read_text())
    est = estimate(
        timings,
        descendants=args.descendants,
        examples=args.examples,
        eval_rows=args.eval_rows,
        workers=args.workers,
        settings=args.settings,
        params=args.params,
        layers=args.layers,
        heads=args.heads,
        d_head=args.d_head,
        dtype_bytes=args.dtype_bytes,
    )
    print(f"timings: {args.timings} ({timings['model']} on {timings['machine']})")
    print("\n".join(est.lines()))


if __name__ == "__main__":
    main()
