"""Per-example costs of a lineage report's three heavy steps, measured, for the cost model of
``docs/scale.md`` (:mod:`benchmarks.cost_model`).

Run: ``.venv/bin/python -m benchmarks.bench_cost [--model smollm2-135m-instruct --n 64
--eval-rows 16 --device cpu --threads N --out benchmarks/cost_cpu.json]``. Measure with the
resources one worker of the planned cluster gets (one GPU, or its share of CPU threads).

Measured on ``--model`` (any name :func:`lineage_lens.models.load_model` takes):

* capture: ``hook_z`` at the answer's last token of ``--n`` HaluEval probing examples (float32,
  shared-prefix capture, batch 16): seconds per example and tokens per example;
* probe: 5-fold Newton probes of every head on those examples: seconds per example x head;
* sweep: one gating setting of the HaluEval judgement (log-prob, ``--eval-rows`` rows, one answer
  seed): seconds per evaluation row per setting;
* memory: the model's weight bytes, and on CUDA the peak allocated memory of each step.

Each timing is the median of ``--repeats`` runs (after one warm-up run of the capture).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from lineage_lens.capture import collect_head_activations
from lineage_lens.data import load_probe_examples
from lineage_lens.evals.halueval import HaluEvalJudgement
from lineage_lens.fileio import atomic_open
from lineage_lens.gating import TruthGate
from lineage_lens.models import head_geometry, load_model
from lineage_lens.probing import fit_truth_scores


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _peak(device: str) -> int | None:
    if not device.startswith("cuda"):
        return None
    value = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    return int(value)


def measure(model_name: str, n: int, eval_rows: int, device: str, repeats: int) -> dict:
    model = load_model(model_name, device=device)
    geo = head_geometry(model)
    n_params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    examples = load_probe_examples("halueval", n_probe=max(2, n // 2), split_seed=0)[:n]
    capture = dict(batch_size=16, dtype=torch.float32, progress=False)
    collect_head_activations(model, examples[:16], **capture)  # warm-up
    _peak(device)
    t_capture, acts = _timed(
        lambda: collect_head_activations(model, examples, **capture), device, repeats
    )
    peak_capture = _peak(device)
    tokens = float(acts.n_tokens.mean())
    t_probe, _ = _timed(
        lambda: fit_truth_scores(acts, folds=5, seed=0, progress=False), "cpu", repeats
    )
    judge = HaluEvalJudgement(seeds=(0,), limit=eval_rows, batch_size=8, n_probe=292)
    gate = TruthGate(torch.rand(geo.n_layers, geo.n_heads).numpy(), alpha=2.0)
    t_sweep, _ = _timed(lambda: judge(model, gate), device, repeats)
    peak_sweep = _peak(device)
    heads = geo.n_layers * geo.n_heads
    return {
        "model": model_name,
        "device": device,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores"
        + (f", {torch.cuda.get_device_name()}" if device.startswith("cuda") else ""),
        "torch_threads": torch.get_num_threads(),
        "n_params": n_params,
        "weight_bytes": weight_bytes,
        "n_layers": geo.n_layers,
        "n_heads": geo.n_heads,
        "d_head": geo.d_head,
        "n_examples": len(examples),
        "tokens_per_example": tokens,
        "capture_s_per_example": t_capture / len(examples),
        "probe_s_per_example_head": t_probe / (len(examples) * heads),
        "eval_rows": eval_rows,
        "sweep_s_per_row_setting": t_sweep / eval_rows,
        "peak_bytes_capture": peak_capture,
        "peak_bytes_sweep": peak_sweep,
        "repeats": repeats,
        "date": time.strftime("%Y-%m-%d"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--eval-rows", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (one worker's share)"
    )
    ap.add_argument("--out", default="benchmarks/cost_cpu.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(args.model, args.n, args.eval_rows, args.device, args.repeats)
    result["command"] = (
        f".venv/bin/python -m benchmarks.bench_cost --model {args.model} --n {args.n} "
        f"--eval-rows {args.eval_rows} --device {args.device} --repeats {args.repeats}"
        + (f" --threads {args.threads}" if args.threads else "")
    )
    with atomic_open(Path(args.out), "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
