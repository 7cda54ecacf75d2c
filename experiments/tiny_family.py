"""The zoo's tiny family: is its Truth Score map inherited, and what does it look like?

The tiny family (:mod:`experiments.zoo_family`: ancestor ``base``, descendants ``instruct`` and
``vlm``, the same-shape unrelated ``control``) probed on the same world examples: the correlation
of every member's per-head Truth Scores with ``base`` (:func:`experiments.inheritance.run_zoo`:
``inheritance_zoo.png`` / ``.csv``) and the members' heatmaps on one colour scale
(:func:`experiments.heatmaps.run_zoo`: ``heatmaps_zoo.png`` / ``.csv``). Its own analysis, apart
from the published lineage's Fig. 1 and heatmaps, so ``make demo`` (which leaves the tiny family
out) regenerates those sections exactly as committed and this one stays as its command wrote it.
"""

from __future__ import annotations

from pathlib import Path

from experiments import heatmaps, inheritance
from experiments._common import FIGURES, Section, cli


def run(profile: str = "demo", out_dir: Path = FIGURES) -> Section:
    """Write the tiny family's inheritance and heatmap figures; return the section."""
    out_dir = Path(out_dir)
    inherit_md, inherit_files = inheritance.run_zoo(profile, out_dir)
    heat_md, heat_files = heatmaps.run_zoo(profile, out_dir)
    markdown = f"{inherit_md}\n\nHeatmap summary (one colour scale):\n{heat_md}"
    return Section("The zoo's tiny family", markdown, inherit_files + heat_files)


if __name__ == "__main__":
    cli(run, __doc__ or "")
