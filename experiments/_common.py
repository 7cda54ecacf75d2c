"""Shared plumbing of the experiments: profiles, output folders, figure and CSV writing."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd

from lineage_lens.fileio import atomic_open, atomic_path

PROFILES = ("test", "demo", "full")
FIGURES = Path(__file__).resolve().parent.parent / "figures"

#: Resampling effort per profile: bootstrap resamples and permutations of the statistics.
RESAMPLES = {"test": 200, "demo": 2000, "full": 10000}


@dataclass
class Section:
    """One analysis' part of the report: a title, markdown text and the files it wrote."""

    title: str
    markdown: str
    files: list[Path]

    def render(self, relative_to: Path | None = None) -> str:
        links = []
        for f in self.files:
            shown = Path(f).resolve()
            if relative_to is not None:
                shown = Path(os.path.relpath(shown, relative_to.resolve()))
            links.append(f"![{f.name}]({shown})" if f.suffix == ".png" else f"[{f.name}]({shown})")
        return f"## {self.title}\n\n{self.markdown}\n\n" + "\n".join(links) + "\n"


def fmt_change(value: float, low: float, high: float) -> str:
    """A signed change with its confidence interval, as the reports print it: ``+0.052 [+0.010,
    +0.093]``."""
    return f"{value:+.3f} [{low:+.3f}, {high:+.3f}]"


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Write ``fig`` atomically as PNG and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def save_csv(frame: pd.DataFrame, path: Path) -> Path:
    """Write the plotted numbers atomically as CSV."""
    with atomic_open(path, "w", newline="") as fh:
        frame.to_csv(fh, index=False, float_format="%.6g")
    return path


def cli(run: Callable[..., Section], description: str) -> None:
    """``python -m experiments.<name> --profile P --out DIR``: run one analysis, print its section."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--profile", choices=PROFILES, default="demo")
    parser.add_argument("--out", type=Path, default=FIGURES)
    args = parser.parse_args()
    section = run(profile=args.profile, out_dir=args.out)
    print(section.render())
