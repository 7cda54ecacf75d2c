"""Benchmark 7a: our two probe solvers vs the paper's AdamW recipe on the same activations.

For each activation set it reports, with 5 folds and seed 0:

* the wall time of ``fit_truth_scores(solver="newton")`` (exact L2 logistic regression, all heads
  batched) and of ``fit_truth_scores(solver="adamw")`` (the paper's recipe -- zero init, BCE,
  AdamW lr 1e-2 / wd 1e-3, 200 epochs, batch 512 -- on the CPU through the compiled kernel of
  ``lineage_lens._recipe_kernel``, heads spread over threads; the same trajectory per head as the
  recipe),
* Newton's speed-up over our batched recipe, and mean / max |Δ accuracy| per head between the two
  estimators (synthetic sets: also the mean over the heads that carry the label and over the null
  heads),
* a noise floor: mean |Δ accuracy| of Newton between fold seeds 0 and 1 (how much the Truth Score
  moves with nothing but the fold assignment),
* optionally (``--loop-heads K``) the paper's recipe as it is usually written: one ``nn.Linear``
  probe per head in a Python loop, run on the first K heads with the same folds, per-fold
  shuffles and standardisation (seconds per head; the whole-model time is that rate times the
  number of heads, an estimate), each solver's speed-up over it and each solver's mean |Δ
  accuracy| from it on those K heads,
* the recipe's two backends on one training fold of the first 64 heads: ``adamw_logistic``'s
  compiled kernel (``backend="numba"``) against its batched tensor version (``backend="torch"``,
  the one used off the CPU), seconds, ratio and the largest difference of their weights.

Synthetic activations: N examples (balanced labels), L=H=32, d_head=128, one head in eight carries
the label along a random direction. ``--acts DIR`` adds a saved ``HeadActivations`` (real model).

``--authors N:LAYERS,...`` adds the comparison with the authors' own procedure (issue 19): their
``vectorized_linear_probe`` (TruthProbe, ``probing/probe_vicuna_series.py``) written plainly in
PyTorch from its description -- one ``W [L, H, d]`` / ``B [L, H]`` tensor pair, zero init, one
``torch.optim.AdamW`` (lr 1e-2, wd 1e-3) on the mean BCE over ``(batch, layer, head)``, batches of
512 in index order, 200 epochs, unstratified ``KFold(5, shuffle=True, random_state=42)``, raw
features, ``sigmoid > 0.5``, scikit-learn metrics per head and fold, mean over folds -- against
``fit_truth_scores(solver="truthprobe")`` on the same synthetic set (N examples, LAYERS x 32 heads
of 128 dims, one run each, same torch thread count), and ``solver="adamw"`` beside it. With
``--tables authors`` only that table is run.

    .venv/bin/python -m benchmarks.bench_probing [--sizes 292,2726] [--layers 32]
        [--acts runs/bench/acts_smollm2_292] [--loop-heads 16] [--authors 292:32,2726:4]
        [--tables solvers,backends,authors]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score
from sklearn.model_selection import KFold, StratifiedKFold

from lineage_lens.probing import ADAMW_RECIPE, adamw_logistic, fit_truth_scores, standardize


def synthetic(n: int, layers: int = 32, heads: int = 32, d: int = 128, seed: int = 0):
    """Gaussian activations; one head in eight carries the label along a random direction."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 2)
    x = rng.standard_normal((n, layers, heads, d), dtype=np.float32)
    strength = rng.uniform(0.0, 1.5, (layers, heads)) * (rng.random((layers, heads)) < 0.125)
    direction = rng.standard_normal((layers, heads, d)).astype(np.float32)
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    x += (y[:, None, None, None] - 0.5) * 2 * strength[None, ..., None] * direction[None]
    return x, y, strength > 0


def paper_loop(x: np.ndarray, y: np.ndarray, k: int, folds: int = 5) -> tuple[float, np.ndarray]:
    """The paper's recipe written per head (``nn.Linear`` + AdamW in a Python loop) on the first
    ``k`` heads: seconds per head and each head's fold-averaged test accuracy (same folds, same
    per-fold shuffles and standardisation as ``fit_truth_scores(..., seed=0)``)."""
    n, layers, heads, d = x.shape
    flat = x.reshape(n, layers * heads, d)
    splits = list(StratifiedKFold(folds, shuffle=True, random_state=0).split(np.zeros(n), y))
    yt = torch.as_tensor(y, dtype=torch.float32)
    acc = np.zeros(k)
    start = time.perf_counter()
    for g in range(k):
        feats = torch.as_tensor(np.ascontiguousarray(flat[:, g]), dtype=torch.float32)
        for fold, (tr, te) in enumerate(splits):
            xtr, xte = feats[tr], feats[te]
            mean, std = xtr.mean(0), xtr.std(0, unbiased=False)
            std = torch.where(std > 1e-12, std, torch.ones_like(std))
            xtr, xte = (xtr - mean) / std, (xte - mean) / std
            probe = torch.nn.Linear(d, 1)
            torch.nn.init.zeros_(probe.weight)
            torch.nn.init.zeros_(probe.bias)
            opt = torch.optim.AdamW(
                probe.parameters(), lr=ADAMW_RECIPE["lr"], weight_decay=ADAMW_RECIPE["weight_decay"]
            )
            gen = torch.Generator().manual_seed(fold)
            bs = int(ADAMW_RECIPE["batch_size"])
            for _ in range(int(ADAMW_RECIPE["epochs"])):
                perm = torch.randperm(len(tr), generator=gen)
                for b in range(0, len(tr), bs):
                    idx = perm[b : b + bs]
                    loss = torch.nn.functional.binary_cross_entropy_with_logits(
                        probe(xtr[idx]).squeeze(1), yt[tr][idx]
                    )
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            with torch.no_grad():
                pred = (probe(xte).squeeze(1) > 0).numpy()
            acc[g] += (pred == (y[te] == 1)).mean() / folds
    return (time.perf_counter() - start) / k, acc


def authors_vectorised(
    x: np.ndarray, y: np.ndarray, seed: int = 42
) -> tuple[np.ndarray, float, float]:
    """The authors' ``vectorized_linear_probe`` procedure, written plainly from its description
    (see the module docstring): ``(accuracy [L, H] as the mean of fold accuracies, training
    seconds, metric seconds)``. Precision, recall and F1 are computed too, as theirs does."""
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.long)
    n, layers, heads, d = xt.shape
    lr, wd = float(ADAMW_RECIPE["lr"]), float(ADAMW_RECIPE["weight_decay"])
    bs, epochs = int(ADAMW_RECIPE["batch_size"]), int(ADAMW_RECIPE["epochs"])
    folds: dict[str, list[np.ndarray]] = {"accuracy": [], "precision": [], "recall": [], "f1": []}
    train_s = metric_s = 0.0
    for tr, va in KFold(5, shuffle=True, random_state=seed).split(list(range(n))):
        start = time.perf_counter()
        w = torch.zeros(layers, heads, d, requires_grad=True)
        b = torch.zeros(layers, heads, requires_grad=True)
        opt = torch.optim.AdamW([w, b], lr=lr, weight_decay=wd)
        tr_choice, va_choice = list(tr), list(va)
        for _ in range(epochs):
            for s in range(0, len(tr_choice), bs):
                batch = tr_choice[s : s + bs]
                xb, yb = xt[batch], yt[batch].float()
                logits = (xb * w).sum(-1) + b
                target = yb[:, None, None].expand(-1, layers, heads)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        preds, trues = [], []
        with torch.inference_mode():
            for s in range(0, len(va_choice), bs):
                batch = va_choice[s : s + bs]
                prob = torch.sigmoid((xt[batch] * w).sum(-1) + b).numpy()
                preds.append((prob > 0.5).astype(np.int32))
                trues.append(yt[batch].numpy())
        y_va, yhat = np.concatenate(trues), np.concatenate(preds)
        mid = time.perf_counter()
        per = {m: np.zeros((layers, heads)) for m in folds}
        for layer in range(layers):
            for head in range(heads):
                yp = yhat[:, layer, head]
                per["accuracy"][layer, head] = accuracy_score(y_va, yp)
                per["precision"][layer, head] = precision_score(y_va, yp, zero_division=0)
                per["recall"][layer, head] = recall_score(y_va, yp, zero_division=0)
                per["f1"][layer, head] = f1_score(y_va, yp, zero_division=0)
        for m in folds:
            folds[m].append(per[m])
        train_s += mid - start
        metric_s += time.perf_counter() - mid
    return np.mean(folds["accuracy"], axis=0), train_s, metric_s


def versus_authors(n: int, layers: int) -> str:
    """One row of the authors' table: their procedure vs ``solver="truthprobe"`` (and
    ``solver="adamw"``) on one synthetic set of ``n`` examples and ``layers`` x 32 heads."""
    x, y, _ = synthetic(n, layers=layers)
    fit_truth_scores(x[:20, :1, :2], y[:20], solver="truthprobe", progress=False)  # load kernel
    start = time.perf_counter()
    ours = fit_truth_scores(x, y, solver="truthprobe", progress=False)
    ours_s = time.perf_counter() - start
    print(f"  authors N={n} L={layers}: truthprobe {ours_s:.1f} s", flush=True)
    start = time.perf_counter()
    adamw = fit_truth_scores(x, y, solver="adamw", progress=False)
    adamw_s = time.perf_counter() - start
    print(f"  authors N={n} L={layers}: adamw {adamw_s:.1f} s", flush=True)
    start = time.perf_counter()
    theirs, train_s, metric_s = authors_vectorised(x, y)
    theirs_s = time.perf_counter() - start
    print(
        f"  authors N={n} L={layers}: theirs {theirs_s:.1f} s "
        f"(training {train_s:.1f} s, metrics {metric_s:.1f} s)",
        flush=True,
    )
    delta = np.abs(ours.accuracy - theirs)
    delta_adamw = np.abs(adamw.accuracy - theirs)
    _, _, h, d = x.shape
    return (
        f"| {n} | {layers}x{h}x{d} | {theirs_s:.1f} ({train_s:.1f} + {metric_s:.1f}) | "
        f"{ours_s:.2f} | **{theirs_s / ours_s:.0f}x** | {delta.mean():.5f} | {delta.max():.4f} | "
        f"{int((delta > 0).sum())} / {delta.size} | {adamw_s:.2f} | {delta_adamw.mean():.4f} |"
    )


def compare(
    x: np.ndarray, y: np.ndarray, label: str, loop_heads: int, signal: np.ndarray | None = None
) -> str:
    """One table row; ``signal`` (``[L, H]`` bool, synthetic sets) splits the Newton-vs-recipe
    agreement into the heads that carry the label and the null heads."""
    timings, scores = {}, {}
    for solver in ("newton", "adamw"):
        start = time.perf_counter()
        scores[solver] = fit_truth_scores(x, y, solver=solver, seed=0, progress=False)
        timings[solver] = time.perf_counter() - start
        print(f"  {label} N={len(y)} {solver}: {timings[solver]:.1f} s", flush=True)
    seed1 = fit_truth_scores(x, y, solver="newton", seed=1, progress=False)
    delta = np.abs(scores["newton"].accuracy - scores["adamw"].accuracy)
    noise = np.abs(scores["newton"].accuracy - seed1.accuracy).mean()
    n, layers, heads, d = x.shape
    split = "-"
    if signal is not None:
        split = f"{delta[signal].mean():.4f} / {delta[~signal].mean():.4f}"
    loop = "not run"
    if loop_heads:
        k = min(loop_heads, layers * heads)
        per_head, loop_acc = paper_loop(x, y, k)
        est = per_head * layers * heads
        ours = {s: np.abs(scores[s].accuracy.ravel()[:k] - loop_acc).mean() for s in scores}
        loop = (
            f"{per_head:.2f} s/head, est. {est:.0f} s: newton {est / timings['newton']:.0f}x "
            f"(abs Δacc {ours['newton']:.4f}), adamw {est / timings['adamw']:.0f}x "
            f"(abs Δacc {ours['adamw']:.4f})"
        )
    return (
        f"| {label} | {n} | {layers}x{heads}x{d} | {timings['newton']:.1f} | "
        f"{timings['adamw']:.1f} | {timings['adamw'] / timings['newton']:.1f}x | "
        f"{delta.mean():.4f} | {split} | {delta.max():.3f} | {noise:.4f} | {loop} |"
    )


def backends(x: np.ndarray, y: np.ndarray, label: str, heads: int = 64) -> str:
    """One row of the backend table: the recipe on the first fold's training examples of the
    first ``heads`` heads, through the compiled kernel and through batched tensor operations."""
    n = len(y)
    tr, _ = next(StratifiedKFold(5, shuffle=True, random_state=0).split(np.zeros(n), y))
    feats = torch.as_tensor(x.reshape(n, -1, x.shape[-1])[tr, :heads].transpose(1, 0, 2).copy())
    feats = standardize(feats, feats[:, :0])[0]  # as fit_truth_scores standardises a fold
    target = torch.as_tensor(y[tr], dtype=torch.float32)
    timings, weights = {}, {}
    for backend in ("numba", "torch"):
        adamw_logistic(feats[:2], target, epochs=1, backend=backend)  # compile / warm up
        start = time.perf_counter()
        weights[backend] = adamw_logistic(
            feats, target, generator=torch.Generator().manual_seed(0), backend=backend
        )
        timings[backend] = time.perf_counter() - start
    diff = (weights["numba"] - weights["torch"]).abs().max().item()
    return (
        f"| {label} | {len(tr)} | {heads} | {timings['numba']:.2f} | {timings['torch']:.2f} | "
        f"{timings['torch'] / timings['numba']:.1f}x | {diff:.1e} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="292,2726", help="synthetic N values (comma list)")
    parser.add_argument("--layers", type=int, default=32, help="synthetic layers (default 32)")
    parser.add_argument("--acts", default=None, help="a saved HeadActivations (real model)")
    parser.add_argument("--loop-heads", type=int, default=0, help="time the per-head loop on K")
    parser.add_argument(
        "--authors", default="", help="N:LAYERS,... sets for the authors' procedure (issue 19)"
    )
    parser.add_argument(
        "--tables", default="solvers,backends,authors", help="which tables to run (comma list)"
    )
    args = parser.parse_args()
    tables = set(args.tables.split(","))
    print(
        f"Machine: {platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, CPU; 5 folds, seed 0 (the authors' table: seed 42).\n"
    )
    if "authors" in tables and args.authors:
        author_rows = []
        for spec in args.authors.split(","):
            n, layers = (int(v) for v in spec.split(":"))
            author_rows.append(versus_authors(n, layers))
        print(
            "\n| N | L x H x d_head | authors' procedure s (training + metrics) | truthprobe s | "
            "speed-up | mean abs Δacc vs authors | max abs Δacc | heads that differ | adamw s | "
            "adamw: mean abs Δacc vs authors |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        print("\n".join(author_rows))
    if not tables & {"solvers", "backends"}:
        return
    rows, backend_rows = [], []
    for n in (int(s) for s in args.sizes.split(",") if s):
        x, y, signal = synthetic(n, layers=args.layers)
        if "solvers" in tables:
            rows.append(compare(x, y, "synthetic", args.loop_heads, signal))
        if "backends" in tables:
            backend_rows.append(backends(x, y, "synthetic"))
    if args.acts:
        from lineage_lens.activations import HeadActivations

        acts = HeadActivations.load(args.acts, mmap=False)
        x = np.asarray(acts.acts, dtype=np.float32)
        label = f"real ({acts.model})"
        if "solvers" in tables:
            rows.append(compare(x, np.asarray(acts.labels), label, args.loop_heads))
        if "backends" in tables:
            backend_rows.append(backends(x, np.asarray(acts.labels), label))
    print(
        "\n| activations | N | L x H x d_head | newton s | adamw s | newton speed-up | "
        "newton vs adamw: mean abs Δacc | signal / null heads | max abs Δacc | seed noise | "
        "paper's per-head loop on K heads: speed-ups and mean abs Δacc vs it |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(
        "\n| recipe backends: activations | training examples | heads | numba s | torch s | "
        "numba speed-up | max abs Δweight |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(backend_rows))


if __name__ == "__main__":
    main()
