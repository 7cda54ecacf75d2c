"""``make demo``: the scoring pipeline on the embedded default model (SmolLM2-135M-Instruct).

Scores every head on the HaluEval probing subset (292 rows, as in the paper), writes
``runs/demo/scores_smollm2.npz`` (+ the paper's CSV layout) and a heatmap, prints the top heads and
compares them with the paper's published Vicuna-7B scores' distribution.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from lineage_lens.data import load_probe_examples
from lineage_lens.models import DEFAULT_MODEL, load_model
from lineage_lens.pipeline import score_model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--n", type=int, default=292, help="probing rows of HaluEval")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    start = time.perf_counter()
    model = load_model(args.model, device="cpu")
    loaded = time.perf_counter()
    examples = load_probe_examples("halueval", n_probe=args.n, split_seed=0)
    scores, _ = score_model(model, examples, batch_size=args.batch_size, dataset="halueval")
    scored = time.perf_counter()

    args.out.mkdir(parents=True, exist_ok=True)
    scores.save(args.out / "scores_smollm2.npz")
    scores.to_csv(args.out / "scores_smollm2_cv5_head_metrics.csv")
    ax = scores.heatmap(title=f"{args.model}: Truth Scores (HaluEval, n={len(examples)})")
    ax.figure.savefig(args.out / "heatmap_smollm2.png", dpi=120, bbox_inches="tight")

    print(scores.summary(k=10))
    print(
        f"\nload {loaded - start:.1f} s, capture+probe {scored - loaded:.1f} s "
        f"({len(examples)} examples); outputs in {args.out}/"
    )


if __name__ == "__main__":
    main()
