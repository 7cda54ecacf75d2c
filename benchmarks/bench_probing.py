"""Benchmark 7a: our batched Newton probes vs the paper's AdamW recipe on the same activations.

Reports the wall-time ratio and the mean |Δ accuracy| per head, at N=292 and N=2726 with
L=H=32, d_head=128 (synthetic activations with planted signal heads), and optionally on real
activations saved by ``HeadActivations.save`` (``--acts DIR``).

    .venv/bin/python -m benchmarks.bench_probing [--sizes 292,2726] [--acts runs/demo/acts]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from lineage_lens.probing import fit_truth_scores


def synthetic(n: int, layers: int = 32, heads: int = 32, d: int = 128, seed: int = 0):
    """Gaussian activations; one head in eight carries the label along a random direction."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 2)
    x = rng.standard_normal((n, layers, heads, d), dtype=np.float32)
    strength = rng.uniform(0.0, 1.5, (layers, heads)) * (rng.random((layers, heads)) < 0.125)
    direction = rng.standard_normal((layers, heads, d)).astype(np.float32)
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    x += (y[:, None, None, None] - 0.5) * 2 * strength[None, ..., None] * direction[None]
    return x, y


def compare(x, y, label: str) -> str:
    timings = {}
    scores = {}
    for solver in ("newton", "adamw"):
        start = time.perf_counter()
        scores[solver] = fit_truth_scores(x, y, solver=solver, seed=0, progress=False)
        timings[solver] = time.perf_counter() - start
    delta = np.abs(scores["newton"].accuracy - scores["adamw"].accuracy)
    n, layers, heads, d = x.shape
    return (
        f"| {label} | {n} | {layers}x{heads}x{d} | {timings['newton']:.1f} | {timings['adamw']:.1f} "
        f"| {timings['adamw'] / timings['newton']:.1f}x | {delta.mean():.4f} | {delta.max():.3f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="292,2726")
    parser.add_argument("--acts", default=None, help="a saved HeadActivations (real model)")
    args = parser.parse_args()
    print(
        f"Machine: {platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, CPU; 5 folds, seed 0.\n"
    )
    print(
        "| activations | N | L x H x d_head | newton s | adamw s | speed-up | mean abs Δacc | max abs Δacc |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n in (int(s) for s in args.sizes.split(",") if s):
        x, y = synthetic(n)
        print(compare(x, y, "synthetic"), flush=True)
    if args.acts:
        from lineage_lens.activations import HeadActivations

        acts = HeadActivations.load(args.acts, mmap=False)
        x = np.asarray(acts.acts, dtype=np.float32)
        print(compare(x, np.asarray(acts.labels), f"real ({acts.model})"))


if __name__ == "__main__":
    main()
