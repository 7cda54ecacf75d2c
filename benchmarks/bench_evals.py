"""HaluEval QA on SmolLM2: baseline vs its own-score TruthGate vs a random-permutation control.

Run: ``.venv/bin/python -m benchmarks.bench_evals [--scores runs/demo/scores_smollm2.npz]
[--limit N] [--seeds 0] [--alpha 4.5]``. Needs the SmolLM2 Truth Scores made by
``python -m lineage_lens.demo``. Evaluates the HaluEval rows left after the 292 probing rows
(log-prob scoring, batch 8) and writes ``benchmarks/evals.md`` with n, wall times and metrics (accuracy
..., and the AUROC of the yes-no log-prob margin).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from lineage_lens.evals.halueval import HaluEvalJudgement
from lineage_lens.fileio import atomic_open
from lineage_lens.models import load_model
from lineage_lens.scores import load_scores
from lineage_lens.sweep import TRUTH, GateSettings, gate_sources, gating_sweep


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scores", default="runs/demo/scores_smollm2.npz")
    ap.add_argument("--limit", type=int, default=None, help="rows (default: all 208)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--alpha", type=float, default=4.5)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out-dir", default="runs/bench_evals")
    ap.add_argument("--md", default="benchmarks/evals.md")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    scores = load_scores(args.scores)
    model = load_model("smollm2-135m-instruct", device="cpu")
    t0 = time.perf_counter()
    judgement = HaluEvalJudgement(seeds=tuple(seeds), limit=args.limit, batch_size=args.batch_size)
    frame = gating_sweep(
        model,
        judgement,
        gate_sources(scores, ["random"], control_seed=0),
        [args.alpha],
        gate=GateSettings(norm="center", placement="z"),
        control="random",
        versus_control=(TRUTH,),
        out_dir=args.out_dir,
    )
    total = time.perf_counter() - t0
    # each setting's wall time, from the sweep's results.json
    results = json.loads((Path(args.out_dir) / "results.json").read_text(encoding="utf-8"))
    frame["wall_s"] = [s["wall_s"] for s in results["settings"]]
    frame = frame.rename(columns={"scores": "gate"})
    cols = ["gate", "alpha", "n", "accuracy", "accuracy_std", "precision", "recall", "f1"]
    cols += ["yes_ratio", "n_unparsed"]
    cols += [c for c in ("auroc", "auroc_std") if c in frame.columns] + ["wall_s"]
    sub = frame[cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in sub.iterrows():
        cells = [
            str(int(v))
            if k in ("n", "n_unparsed")
            else f"{v:.4f}"
            if isinstance(v, float)
            else str(v)
            for k, v in row.items()
        ]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    cmd = "python -m benchmarks.bench_evals " + " ".join(sys.argv[1:] if argv is None else argv)
    text = (
        "# HaluEval QA evaluation on SmolLM2-135M-Instruct: baseline vs TruthGate vs control\n\n"
        f"Command: `{cmd.strip()}`\n\n"
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, CPU. Total wall time {total:.1f} s.\n\n"
        "HaluEval rows left after the 292 probing rows of split_probe_eval(seed=0); log-prob "
        f"scoring; seeds {seeds}; gate alpha={args.alpha}, norm=center, placement=z, "
        "random control = the same scores permuted across heads (seed 0).\n\n" + table + "\n"
    )
    with atomic_open(args.md, "w", encoding="utf-8") as fh:
        fh.write(text)
    print(text)


if __name__ == "__main__":
    main()
