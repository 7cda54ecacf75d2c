"""Greedy-generation throughput of SmolLM2: ungated vs TruthGate ``"z"`` hooks vs ``"fold"``.

Run: ``.venv/bin/python -m benchmarks.bench_gating [--rounds 5 --new-tokens 64 --out FILE]``.

For every (round, prompt) the three configurations (ungated, z, fold) generate ``--new-tokens``
greedy tokens (KV cache, no early stop) back to back in a rotated order, so machine-load drifts
hit them alike. Reported: tokens/s per configuration and the median paired ratio to ungated.
On a shared CPU pass ``--threads 1`` (OpenMP threads spin badly when cores are oversubscribed).
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from lineage_lens.fileio import atomic_open
from lineage_lens.gating import TruthGate
from lineage_lens.kvcache import kv_cache_ok
from lineage_lens.models import head_geometry, load_model

PROMPTS = [
    "The capital of France is",
    "Here is a short story about a cat who learned to read:",
    "Explain in simple words why the sky is blue.",
]
CONFIGS = ("ungated", "z", "fold")


def _context(config: str, gate: TruthGate, model):
    if config == "ungated":
        return contextlib.nullcontext()
    return gate.applied(model, config)


def run(rounds: int, new_tokens: int, threads: int | None) -> dict:
    if threads:
        torch.set_num_threads(threads)
    model = load_model("smollm2-135m-instruct", device="cpu")
    geo = head_geometry(model)
    rng = np.random.default_rng(0)
    # Overhead does not depend on the score values, only on every layer being gated.
    gate = TruthGate(rng.uniform(0.5, 0.9, size=geo.shape), alpha=4.5, norm="center")
    inputs = [model.to_tokens(p) for p in PROMPTS]

    def generate(ids: torch.Tensor) -> torch.Tensor:
        return model.generate(
            ids,
            max_new_tokens=new_tokens,
            do_sample=False,
            verbose=False,
            return_type="tokens",
            use_past_kv_cache=kv_cache_ok(model),
            stop_at_eos=False,
        )

    # One trial = one prompt generated under one configuration. For every (round, prompt) the
    # three configurations run back to back in a rotated order: paired samples under the same
    # machine load, whose ratios are robust to the load drifting over the run.
    times: dict[str, list[float]] = {c: [] for c in CONFIGS}
    setup: dict[str, list[float]] = {c: [] for c in CONFIGS}  # apply + remove, not generation
    outputs: dict[str, list[torch.Tensor]] = {c: [] for c in CONFIGS}
    with torch.inference_mode():
        for config in CONFIGS:  # warm-up (not timed)
            with _context(config, gate, model):
                generate(inputs[0])
        for r in range(rounds):
            for p, ids in enumerate(inputs):
                k = (r * len(inputs) + p) % len(CONFIGS)
                for config in CONFIGS[k:] + CONFIGS[:k]:
                    t0 = time.perf_counter()
                    with _context(config, gate, model):
                        t1 = time.perf_counter()
                        out = generate(ids)
                        t2 = time.perf_counter()
                    t3 = time.perf_counter()
                    times[config].append(t2 - t1)
                    setup[config].append((t1 - t0) + (t3 - t2))
                    if r == 0:
                        outputs[config].append(out)
    tps = {c: [new_tokens / t for t in ts] for c, ts in times.items()}
    overall = {c: new_tokens * len(ts) / sum(ts) for c, ts in times.items()}
    paired = {c: [a / b for a, b in zip(tps[c], tps["ungated"], strict=True)] for c in CONFIGS}
    ratios = {c: statistics.median(v) for c, v in paired.items()}
    iqr = {c: tuple(np.percentile(v, [25, 75]).tolist()) for c, v in paired.items()}
    agree = all(torch.equal(a, b) for a, b in zip(outputs["z"], outputs["fold"], strict=True))
    return {
        "tps": tps,
        "overall": overall,
        "iqr": iqr,
        "setup_ms": {c: 1e3 * statistics.median(v) for c, v in setup.items()},
        "ratios": ratios,
        "z_fold_same_tokens": agree,
        "geometry": geo,
        "rounds": rounds,
        "new_tokens": new_tokens,
        "threads": torch.get_num_threads(),
    }


def to_markdown(res: dict, command: str) -> str:
    geo = res["geometry"]
    lines = [
        "## Gating overhead (greedy generation, SmolLM2-135M-Instruct)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, CPU, torch "
        f"{torch.__version__}, {res['threads']} threads (fp32). Model "
        f"{geo.n_layers} layers x {geo.n_heads} heads; every layer gated (alpha 4.5, center, "
        f"seeded random scores). {res['rounds']} rounds x {len(PROMPTS)} prompts x "
        f"{res['new_tokens']} greedy new tokens (KV cache, no early stop); for every (round, "
        "prompt) the three configurations run back to back in a rotated order.",
        "",
        "| configuration | tokens/s (total) | median per trial | min | max "
        "| median paired ratio to ungated (IQR) | overhead |",
        "|---|---|---|---|---|---|---|",
    ]
    for config in CONFIGS:
        t = res["tps"][config]
        ratio = res["ratios"][config]
        lines.append(
            f"| {config} | {res['overall'][config]:.1f} | {statistics.median(t):.1f} | "
            f"{min(t):.1f} | {max(t):.1f} | "
            f"{ratio:.3f} ({res['iqr'][config][0]:.3f}-{res['iqr'][config][1]:.3f}) | "
            f"{100 * (1 - ratio):+.1f} % |"
        )
    lines += [
        "",
        f"`z` and `fold` generated identical tokens: {res['z_fold_same_tokens']}.",
        "Tokens/s time the generation only; applying and removing the gate is timed apart "
        f"(median per trial): z hooks {res['setup_ms']['z']:.2f} ms, fold + bit-exact restore "
        f"{res['setup_ms']['fold']:.1f} ms (one-time per `applied` block, not per token).",
        "Overhead = 1 - median over trials of (gated tokens/s / ungated tokens/s of the same "
        "round and prompt); negative means faster than ungated, i.e. within noise.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the markdown here")
    args = parser.parse_args()
    command = ".venv/bin/python -m benchmarks.bench_gating" + "".join(
        f" --{k.replace('_', '-')} {v}"
        for k, v in vars(args).items()
        if v is not None and k != "out"
    )
    res = run(args.rounds, args.new_tokens, args.threads)
    text = to_markdown(res, command)
    print(text)
    if args.out is not None:
        with atomic_open(args.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
