"""Paired bootstrap of the AUROC change a gate brings, from a ``bench_evals`` result cache.

``bench_evals`` (through ``gating_sweep``) evaluates the ungated model first, then the TruthGate, then
the random control, appending one line per distinct prompt to ``<out-dir>/cache.jsonl`` under a
per-setting key prefix. This script groups the lines by prefix in order of first appearance, takes
the ``log p(Yes) - log p(No)`` margin of every distinct prompt (a row showing its hallucinated
answer is a positive), and reports each gated setting's pooled AUROC minus the ungated one with a
95 % percentile CI from resampling the prompts (the same resample for both settings: paired).

    .venv/bin/python -m benchmarks.evals_paired runs/evals_full/cache.jsonl [--names none,truth,random]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from sklearn.metrics import roc_auc_score

from lineage_lens.stats import paired_auroc_delta


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("cache")
    ap.add_argument("--names", default="none,truth,random", help="settings in run order")
    ap.add_argument("--resamples", type=int, default=2000)
    args = ap.parse_args(argv)
    with open(args.cache, encoding="utf-8") as fh:
        lines = [json.loads(line) for line in fh if line.strip()]
    prefixes = list(dict.fromkeys(rec["key"].split(":", 1)[0] for rec in lines))
    names = args.names.split(",")
    if len(prefixes) != len(names):
        raise SystemExit(f"{len(prefixes)} settings in the cache but --names lists {len(names)}")
    margin: dict[str, dict[str, float]] = {n: {} for n in names}
    for rec in lines:
        prefix, key = rec["key"].split(":", 1)
        r = rec["record"]
        margin[names[prefixes.index(prefix)]][key] = r["log_p_yes"] - r["log_p_no"]
    keys = sorted(margin[names[0]])
    y = np.array([k.endswith(":h") for k in keys])
    m = {n: np.array([margin[n][k] for k in keys]) for n in names}
    base = names[0]
    print(f"{len(keys)} distinct prompts ({int(y.sum())} show the hallucinated answer)\n")
    print("| setting | pooled AUROC | Δ vs " + base + " | 95 % CI (paired bootstrap) |")
    print("|---|---|---|---|")
    print(f"| {base} | {roc_auc_score(y, m[base]):.4f} | | |")
    for name in names[1:]:
        delta, lo, hi = paired_auroc_delta(y, m[base], m[name], n_resamples=args.resamples)
        print(
            f"| {name} | {roc_auc_score(y, m[name]):.4f} | {delta:+.4f} | [{lo:+.4f}, {hi:+.4f}] |"
        )


if __name__ == "__main__":
    main()
