"""Benchmark 7b: samples/s of ``collect_head_activations`` vs the published capture loop.

Baseline (the TruthProbe approach): one example at a time, ``run_with_cache`` keeping
``blocks.{l}.attn.hook_z`` for the whole sequence at every layer, then reading the answer's last
token. Ours: padded batches, only the probed token kept by the hook, forward stopped after the last
layer's ``hook_z``. Same model, same examples, same tokenization and positions; the vectors of the
two are compared (max abs difference) so the speed-up is not bought with wrong numbers.

    .venv/bin/python -m benchmarks.bench_capture --n 200 --out benchmarks/capture.md \
        [--save-acts runs/bench/acts_smollm2_200]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import sys
import time

import numpy as np
import torch

from lineage_lens._io import atomic_open
from lineage_lens.activations import HeadActivations, collect_head_activations, encode_examples
from lineage_lens.data import halueval_probe_examples, load_halueval_qa
from lineage_lens.models import attn_hook_name, head_geometry, load_model

log = logging.getLogger("bench_capture")


def baseline_capture(model, examples) -> np.ndarray:
    """Batch size 1, full-sequence ``run_with_cache`` over all layers, then index the token."""
    geo = head_geometry(model)
    names = {attn_hook_name(layer, "hook_z") for layer in range(geo.n_layers)}
    encoded = encode_examples(model, examples)
    out = np.zeros((len(examples), geo.n_layers, geo.n_heads, geo.d_head), dtype=np.float32)
    with torch.inference_mode():
        for i, enc in enumerate(encoded):
            tokens = torch.tensor([enc.input_ids])
            _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
            for layer in range(geo.n_layers):
                z = cache[attn_hook_name(layer, "hook_z")][0, enc.position]
                out[i, layer] = z.float().numpy()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200, help="number of HaluEval examples (2 per row)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument(
        "--ablations", action="store_true", help="also time without early stop, and at batch 1"
    )
    p.add_argument("--out", default=None, help="write the markdown report here")
    p.add_argument("--save-acts", default=None, help="save our HeadActivations to this folder")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    model = load_model(args.model, device="cpu")
    examples = halueval_probe_examples(load_halueval_qa(limit=math.ceil(args.n / 2)))[: args.n]
    n_tokens = [len(e.input_ids) for e in encode_examples(model, examples)]

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    base = baseline_capture(model, examples)
    timings["baseline: batch 1, run_with_cache all layers, full sequence"] = (
        time.perf_counter() - t0
    )
    log.info("baseline done in %.1f s", timings[next(iter(timings))])

    def ours(label: str, **kw) -> HeadActivations:
        t = time.perf_counter()
        kw.setdefault("batch_size", args.batch_size)
        captured = collect_head_activations(
            model, examples, dtype=torch.float32, progress=False, **kw
        )
        timings[label] = time.perf_counter() - t
        log.info("%s done in %.1f s", label, timings[label])
        return captured

    bs = args.batch_size
    main_label = f"collect_head_activations (batch {bs}, sorted, early stop, shared prefixes)"
    captured = ours(main_label)
    acts = captured.acts
    if args.save_acts:  # real activations for benchmarks.bench_probing --acts
        captured.save(args.save_acts)
    if args.ablations:
        ours(f"collect_head_activations (batch {bs}, sorted, no early stop)", stop_early=False)
        ours("collect_head_activations (batch 1, early stop)", batch_size=1)
    diff = float(np.abs(acts - base).max())

    base_t = timings[next(iter(timings))]
    lines = [
        "# Benchmark 7b: activation capture",
        "",
        f"Command: `.venv/bin/python -m benchmarks.bench_capture {' '.join(sys.argv[1:] if argv is None else argv)}`",
        "",
        f"Model {args.model} on CPU ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores visible, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads), {len(examples)} HaluEval QA examples "
        f"(prompts of {min(n_tokens)}-{max(n_tokens)} tokens, mean {np.mean(n_tokens):.1f}), "
        "float32, one run each.",
        "",
        "| method | seconds | samples/s | speed-up vs baseline |",
        "|---|---:|---:|---:|",
    ]
    for label, sec in timings.items():
        lines.append(f"| {label} | {sec:.1f} | {len(examples) / sec:.2f} | {base_t / sec:.2f}x |")
    lines += ["", f"Max abs difference of the vectors, ours vs baseline: {diff:.2e}.", ""]
    report = "\n".join(lines)
    print(report)
    if args.out:
        with atomic_open(args.out, "w", encoding="utf-8") as fh:
            fh.write(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
