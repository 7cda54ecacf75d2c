"""Benchmark 7b: seconds of ``collect_head_activations`` vs the authors' capture and a floor.

All methods see the same examples as the same token ids and read the same token (the answer's
last), so their vectors are compared (max abs difference) and a speed-up is not bought with wrong
numbers. Methods:

* **the authors' capture** (TruthProbe, ``collect_llm`` in ``probing/probe_vicuna_series.py``,
  written from its description): the plain Hugging Face model (``AutoModelForCausalLM``), a
  forward pre-hook on every layer's ``self_attn.o_proj`` keeping its input at the probed token
  (that input is the concatenated per-head ``z``, i.e. ``hook_z``), one example per forward
  (batch 1), the full model including the LM head;
* **the floor**: the same Hugging Face model and pre-hooks, but padded batches (sorted by length),
  the decoder only (``model.model``: no LM head), no KV cache -- about the least work a plain
  forward pass can do;
* **ours**: ``collect_head_activations`` on the TransformerBridge (padded sorted batches, only
  the probed token kept by the hook, forward stopped after the last layer's ``hook_z``, shared
  context prefixes run once).
* optionally (``--tl-baseline``) the earlier baseline: ``run_with_cache`` at batch 1 on the
  bridge.

    .venv/bin/python -m benchmarks.bench_capture --n 200 --out benchmarks/capture.md \
        [--save-acts runs/bench/acts_smollm2_200] [--device cuda] [--dtype float16]

On a GPU (``--device cuda``) every timed phase ends with ``torch.cuda.synchronize()``, and each
method gets the same untimed warm-up (CUDA context, kernel selection) before its timed run.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from lineage_lens.activations import HeadActivations
from lineage_lens.batching import model_device
from lineage_lens.capture import EncodedPrompt, collect_head_activations, encode_examples
from lineage_lens.data import load_probe_examples
from lineage_lens.fileio import atomic_open
from lineage_lens.models import (
    attn_hook_name,
    head_geometry,
    load_model,
    resolve_device,
    resolve_model_path,
)

log = logging.getLogger("bench_capture")


def tl_baseline_capture(model, encoded: Sequence[EncodedPrompt]) -> np.ndarray:
    """Batch size 1, full-sequence ``run_with_cache`` over all layers, then index the token."""
    geo = head_geometry(model)
    names = {attn_hook_name(layer, "hook_z") for layer in range(geo.n_layers)}
    out = np.zeros((len(encoded), geo.n_layers, geo.n_heads, geo.d_head), dtype=np.float32)
    with torch.inference_mode():
        for i, enc in enumerate(encoded):
            tokens = torch.tensor([enc.input_ids], device=model_device(model))
            _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
            for layer in range(geo.n_layers):
                z = cache[attn_hook_name(layer, "hook_z")][0, enc.position]
                out[i, layer] = z.float().cpu().numpy()
    return out


class OProjInputs:
    """Forward pre-hooks on every layer's ``self_attn.o_proj`` that keep the input at chosen
    positions (one per batch row): ``[batch, n_heads * d_head]`` per layer."""

    def __init__(self, layers: Sequence[torch.nn.Module]) -> None:
        self.positions = torch.zeros(1, dtype=torch.long)
        self.buffers: list[torch.Tensor | None] = [None] * len(layers)
        self.handles = [
            layer.self_attn.o_proj.register_forward_pre_hook(self._hook(i))
            for i, layer in enumerate(layers)
        ]

    def _hook(self, index: int) -> Callable:
        def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0]  # [batch, seq, n_heads * d_head]
            rows = torch.arange(x.shape[0], device=x.device)
            self.buffers[index] = x[rows, self.positions].detach().float().cpu()

        return hook

    def stacked(self, n_heads: int) -> np.ndarray:
        """``[batch, n_layers, n_heads, d_head]`` of the last forward."""
        per_layer = [b.view(b.shape[0], n_heads, -1) for b in self.buffers if b is not None]
        return torch.stack(per_layer, dim=1).numpy()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def authors_capture(hf_model, encoded: Sequence[EncodedPrompt], n_heads: int) -> np.ndarray:
    """The authors' capture: batch 1, the whole causal LM (LM head included), pre-hooks."""
    hooks = OProjInputs(hf_model.model.layers)
    device = hf_model.device
    out = []
    try:
        with torch.no_grad():
            for enc in encoded:
                ids = torch.tensor([enc.input_ids], device=device)
                hooks.positions = torch.tensor([enc.position], device=device)
                hf_model(input_ids=ids, attention_mask=torch.ones_like(ids))
                out.append(hooks.stacked(n_heads)[0])
    finally:
        hooks.remove()
    return np.stack(out)


def floor_capture(
    hf_model, encoded: Sequence[EncodedPrompt], n_heads: int, batch_size: int, pad_id: int
) -> np.ndarray:
    """The floor: the same model and pre-hooks, sorted padded batches (right padding), the
    decoder only (no LM head), no KV cache."""
    hooks = OProjInputs(hf_model.model.layers)
    device = hf_model.device
    order = np.argsort([len(e.input_ids) for e in encoded], kind="stable")
    out: list[np.ndarray | None] = [None] * len(encoded)
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                width = max(len(encoded[i].input_ids) for i in idx)
                ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):
                    n = len(encoded[i].input_ids)
                    ids[row, :n] = torch.tensor(encoded[i].input_ids)
                    mask[row, :n] = 1
                hooks.positions = torch.tensor([encoded[i].position for i in idx], device=device)
                hf_model.model(
                    input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False
                )
                for row, acts in zip(idx, hooks.stacked(n_heads), strict=True):
                    out[row] = acts
    finally:
        hooks.remove()
    return np.stack(out)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200, help="number of HaluEval examples (2 per row)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (all methods run there)")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "float16", "bfloat16"],
        help="the models' weights (all methods alike); vectors are compared in float32",
    )
    p.add_argument("--tl-baseline", action="store_true", help="also time run_with_cache at batch 1")
    p.add_argument(
        "--ablations", action="store_true", help="also time ours without early stop, at batch 1"
    )
    p.add_argument("--out", default=None, help="write the markdown report here")
    p.add_argument("--save-acts", default=None, help="save our HeadActivations to this folder")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from transformers import AutoModelForCausalLM

    device = resolve_device(args.device)
    weights = getattr(torch, args.dtype)
    model = load_model(args.model, device=device, dtype=weights)
    hf_dir = resolve_model_path(args.model)
    hf_model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=weights).to(device).eval()
    geo = head_geometry(model)
    examples = load_probe_examples("halueval", limit=math.ceil(args.n / 2))[: args.n]
    encoded = encode_examples(model, examples)
    n_tokens = [len(e.input_ids) for e in encoded]
    pad_id = model.tokenizer.pad_token_id
    pad_id = model.tokenizer.eos_token_id if pad_id is None else pad_id

    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}
    vectors: dict[str, np.ndarray] = {}

    def sync() -> None:
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)

    def timed(label: str, fn: Callable[[], np.ndarray]) -> None:
        sync()
        start, start_cpu = time.perf_counter(), time.process_time()
        vectors[label] = fn()
        sync()
        timings[label] = time.perf_counter() - start
        cpu[label] = time.process_time() - start_cpu
        log.info("%s done in %.1f s (CPU %.1f s)", label, timings[label], cpu[label])

    authors = "the authors' capture: HF model, o_proj pre-hooks, batch 1, LM head"
    floor = f"floor: HF decoder only, o_proj pre-hooks, batch {args.batch_size}, sorted"
    bs = args.batch_size
    ours_label = f"collect_head_activations (batch {bs}, sorted, early stop, shared prefixes)"
    # warm-up (first-call costs of each path), untimed
    authors_capture(hf_model, encoded[:2], geo.n_heads)
    floor_capture(hf_model, encoded[:2], geo.n_heads, bs, pad_id)
    collect_head_activations(model, examples[:2], dtype=torch.float32, progress=False)
    timed(authors, lambda: authors_capture(hf_model, encoded, geo.n_heads))
    timed(floor, lambda: floor_capture(hf_model, encoded, geo.n_heads, bs, pad_id))
    captured: list[HeadActivations] = []

    def ours(**kw) -> np.ndarray:
        kw.setdefault("batch_size", bs)
        acts = collect_head_activations(model, examples, dtype=torch.float32, progress=False, **kw)
        captured.append(acts)
        return np.asarray(acts.acts)

    timed(ours_label, ours)
    if args.save_acts:  # real activations for benchmarks.bench_probing --acts
        captured[0].save(args.save_acts)
    if args.ablations:
        timed(f"ours without early stop (batch {bs})", lambda: ours(stop_early=False))
        timed("ours at batch 1", lambda: ours(batch_size=1))
    if args.tl_baseline:
        timed(
            "run_with_cache on the bridge, batch 1, all layers",
            lambda: tl_baseline_capture(model, encoded),
        )

    ref = vectors[ours_label]
    cpu_info = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    where = (
        f"{torch.cuda.get_device_name(device)} ({cpu_info})"
        if torch.device(device).type == "cuda"
        else f"CPU ({cpu_info})"
    )
    lines = [
        "# Benchmark 7b: activation capture",
        "",
        "Command: `.venv/bin/python -m benchmarks.bench_capture "
        f"{' '.join(sys.argv[1:] if argv is None else argv)}`",
        "",
        f"Model {args.model} on {where}, {len(examples)} HaluEval QA examples "
        f"(prompts of {min(n_tokens)}-{max(n_tokens)} tokens, mean {np.mean(n_tokens):.1f}), "
        f"weights in {args.dtype}, one timed run each, in this order, after an untimed warm-up "
        "of each method on two examples.",
        "",
        "| method | wall s | samples/s | ours is x faster (wall) | process CPU s | ours is x "
        "faster (CPU) | max abs Δ vs ours |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    ours_t, ours_c = timings[ours_label], cpu[ours_label]
    for label, sec in timings.items():
        diff = float(np.abs(vectors[label] - ref).max())
        lines.append(
            f"| {label} | {sec:.1f} | {len(examples) / sec:.2f} | {sec / ours_t:.2f}x | "
            f"{cpu[label]:.1f} | {cpu[label] / ours_c:.2f}x | {diff:.2e} |"
        )
    lines += [
        "",
        f"Goals: ours >= 5x the authors' capture: {timings[authors] / ours_t:.2f}x wall, "
        f"{cpu[authors] / ours_c:.2f}x CPU; ours within 1.2x of the floor's time: "
        f"{ours_t / timings[floor]:.2f}x the floor's wall time, {ours_c / cpu[floor]:.2f}x its "
        "CPU time. Process CPU time (all threads of this process) is less sensitive than wall "
        "time to other jobs on a shared machine.",
        "",
    ]
    report = "\n".join(lines)
    print(report)
    if args.out:
        with atomic_open(args.out, "w", encoding="utf-8") as fh:
            fh.write(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
