"""Alpha sweeps of TruthProbe gating on the zoo family.

The zoo's hallucination test: held-out counterfactual items (a context contradicting the memorised
fact, triples never trained on); a member *follows the context* when the next-token logit of the
context's answer beats the memorised one after ``Context: ... Answer:``. For each ``alpha`` the
share of items followed is measured with :class:`lineage_lens.gating.TruthGate` (``norm="center"``,
``placement="z"``) applied with

* the ancestor ``base``'s own scores on ``base``;
* on each descendant (``instruct``, ``vlm``): the inherited scores (``base``'s), its own, and a
  random control (:func:`lineage_lens.gating.control_scores`, ``base``'s scores permuted).

Writes ``gating_zoo.png`` and ``gating_zoo.csv`` (one row per member, score source and alpha).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch

from experiments._common import FIGURES, Section, cli, save_csv, save_figure
from experiments._zoo import ANCESTOR, DESCENDANTS, zoo_lineage
from lineage_lens.data import PAPER_TEMPLATE
from lineage_lens.gating import TruthGate, control_scores
from lineage_lens.models import load_model
from lineage_lens.scores import TruthScores
from lineage_lens.zoo.world import heldout_counterfactual_items

ALPHAS = {"test": (0.0, 2.0, 8.0), "demo": (0.0, 1.0, 2.0, 4.0, 8.0), "full": (0, 1, 2, 4, 8, 16)}
N_EVAL = {"test": 100, "demo": 300, "full": 1000}


@torch.no_grad()
def context_following(model, items: list[tuple[str, str, str, str]]) -> float:
    """Share of ``(context, question, context answer, prior)`` items whose context answer gets a
    higher next-token logit than the prior after the paper's prompt (bridge forward)."""
    tok = model.tokenizer
    prompts = [
        PAPER_TEMPLATE.split("{answer}")[0].format(context=c, question=q) for c, q, _, _ in items
    ]
    enc = tok(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
    logits = model(enc.input_ids, attention_mask=enc.attention_mask)
    if tok.padding_side == "left":
        last = torch.full((len(items),), enc.input_ids.shape[1] - 1)
    else:
        last = enc.attention_mask.sum(1) - 1
    rows = torch.arange(len(items))
    out = logits[rows, last]
    ctx = torch.tensor([tok.convert_tokens_to_ids(a) for _, _, a, _ in items])
    prior = torch.tensor([tok.convert_tokens_to_ids(p) for _, _, _, p in items])
    return float((out[rows, ctx] > out[rows, prior]).float().mean())


def sweep(profile: str) -> pd.DataFrame:
    """The plotted numbers: context-following rate per member, score source and alpha."""
    lineage = zoo_lineage(profile)
    items = heldout_counterfactual_items(lineage.zoo.world(ANCESTOR), N_EVAL[profile], seed=1)
    base = lineage.scores[ANCESTOR]
    plans: dict[str, dict[str, TruthScores]] = {ANCESTOR: {"own": base}}
    for name in DESCENDANTS:
        plans[name] = {
            "inherited": base,
            "own": lineage.scores[name],
            "random control": control_scores(base, "random", seed=0),
        }
    rows = []
    for member, sources in plans.items():
        model = load_model(lineage.path(member))
        for source, scores in sources.items():
            for alpha in ALPHAS[profile]:
                with TruthGate(scores, alpha=float(alpha), norm="center").applied(model):
                    rate = context_following(model, items)
                rows.append(
                    {"member": member, "scores": source, "alpha": alpha, "context_following": rate}
                )
    return pd.DataFrame(rows)


def plot_sweep(frame: pd.DataFrame) -> plt.Figure:
    members = list(dict.fromkeys(frame["member"]))
    fig, axes = plt.subplots(
        1, len(members), figsize=(3.8 * len(members), 3.3), sharey=True, layout="constrained"
    )
    for ax, member in zip(axes, members, strict=True):
        for source, sub in frame[frame["member"] == member].groupby("scores", sort=False):
            ax.plot(sub["alpha"], sub["context_following"], marker="o", ms=3, label=source)
        ax.set_title(member)
        ax.set_xlabel("alpha")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("context-following rate")
    return fig


def run(profile: str = "demo", out_dir: Path = FIGURES) -> Section:
    """Gating sweeps on the zoo family; write the figure and its CSV."""
    out_dir = Path(out_dir)
    frame = sweep(profile)
    files = [
        save_csv(frame, out_dir / "gating_zoo.csv"),
        save_figure(plot_sweep(frame), out_dir / "gating_zoo.png"),
    ]
    lines = ["| member | scores | " + " | ".join(f"α={a:g}" for a in ALPHAS[profile]) + " |"]
    lines.append("|---|---|" + "---|" * len(ALPHAS[profile]))
    best = []
    for (member, source), sub in frame.groupby(["member", "scores"], sort=False):
        vals = sub["context_following"].to_numpy()
        lines.append(f"| {member} | {source} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
        best.append((vals.max() - vals[0], member, source))
    gain, member, source = max(best)
    lines += [
        "",
        f"Reading: {N_EVAL[profile]} held-out counterfactual items. The largest gain over "
        f"alpha=0 is {gain:+.3f} ({member}, {source} scores); compare each inherited curve with "
        "the random control of the same member before reading a gain as transfer.",
    ]
    return Section("Gating alpha sweeps on the zoo", "\n".join(lines), files)


if __name__ == "__main__":
    cli(run, __doc__ or "")
