"""``lineage-lens gate``: compare a model's greedy continuation with and without a TruthGate."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from lineage_lens.cli import app
from lineage_lens.cli._options import (
    Alpha,
    Device,
    GateControl,
    Metric,
    Model,
    Norm,
    Placement,
    seed_option,
)
from lineage_lens.errors import ConfigError


def parse_layers(spec: str | None) -> list[int] | None:
    """``"0,2,5-7,-1"`` -> ``[0, 2, 5, 6, 7, -1]``; ``None`` or ``""`` -> ``None`` (all layers)."""
    if not spec or not spec.strip():
        return None
    layers: list[int] = []
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(-?\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None or (match.group(2) and int(match.group(1)) < 0):
            raise ConfigError(f"cannot parse layer spec {spec!r} at {part!r}; use e.g. '0,2,5-7'")
        lo = int(match.group(1))
        hi = int(match.group(2)) if match.group(2) else lo
        if hi < lo:
            raise ConfigError(f"empty layer range {part.strip()!r} in {spec!r}")
        layers.extend(range(lo, hi + 1))
    return layers


@app.command("gate")
def gate_command(
    scores: Annotated[
        Path, typer.Option("--scores", help="Truth Scores (.npz ours, .npy or .csv).")
    ],
    alpha: Alpha,
    prompt: Annotated[str, typer.Option("--prompt", help="Prompt to continue.")],
    model: Model = "smollm2-135m-instruct",
    norm: Norm = "center",
    metric: Metric = "accuracy",
    placement: Placement = "z",
    clamp_min: float = typer.Option(0.0, "--clamp-min", help="Lower bound of the gates."),
    no_clamp: bool = typer.Option(
        False, "--no-clamp", help="Keep negative gates (published behaviour)."
    ),
    layers: str = typer.Option("", "--layers", help="Layers to gate, e.g. '0,2,10-15' (all)."),
    control: GateControl = "",
    seed: int = seed_option("the random control"),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1),
    chat: bool = typer.Option(
        False, "--chat/--no-chat", help="Wrap the prompt in the tokenizer's chat template."
    ),
    device: Device = None,
) -> None:
    """Show the greedy continuation of PROMPT without and with the gate, and the gate summary."""
    import torch

    from lineage_lens.batching import check_context, logits_checked
    from lineage_lens.cli._checks import check_device
    from lineage_lens.gating import TruthGate
    from lineage_lens.kvcache import kv_cache_ok
    from lineage_lens.models import load_model
    from lineage_lens.scores import load_scores

    device = check_device(device)
    truth_scores = load_scores(scores)
    gate = TruthGate(
        truth_scores,
        alpha=alpha,
        norm=norm,  # type: ignore[arg-type]
        metric=metric,
        clamp_min=None if no_clamp else clamp_min,
        layers=parse_layers(layers),
        placement=placement,  # type: ignore[arg-type]
    )
    if control:
        gate = gate.control(control, seed=seed)  # type: ignore[arg-type]
    bridge = load_model(model, device=device)
    gate.check_model(bridge)
    tok = bridge.tokenizer
    if chat and getattr(tok, "chat_template", None):
        text = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    else:
        ids = bridge.to_tokens(prompt, truncate=False)  # never cut silently: check_context
    check_context(bridge, [ids[0].tolist()], ["--prompt"], new_tokens=max_new_tokens)
    ids = ids.to(bridge.cfg.device)
    use_cache = kv_cache_ok(bridge)  # uncached if the cache is unsound

    def continuation(alpha: float | None = None) -> str:
        with torch.no_grad(), logits_checked(bridge, ["--prompt"], alpha=alpha):
            out = bridge.generate(
                ids,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                verbose=False,
                return_type="tokens",
                use_past_kv_cache=use_cache,
            )
        return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)

    ungated = continuation()
    with gate.applied(bridge):
        gated = continuation(gate.alpha)
    typer.echo(gate.summary())
    typer.echo(f"\nprompt: {prompt}")
    typer.echo(f"\n--- ungated ---\n{ungated}")
    typer.echo(f"\n--- gated ({gate.placement}) ---\n{gated}")
