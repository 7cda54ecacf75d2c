"""Run the experiments of a profile and write ``runs/<profile>/REPORT.md``.

python -m experiments.run_all --profile test|demo|full [--figures DIR] [--only a,b]

``demo`` (``make demo``) recomputes Fig. 1 and the heatmaps from the paper's published scores and
runs the paper's question on the real multimodal lineage, SmolLM2-135M-Instruct -> ``smollm2-vlm``
(:mod:`experiments.mllm_family`): Fig. 1 sets a, b, d and the gating transfer. ``full`` (``make reproduce``) adds every other analysis: the paper's published scores,
the tiny synthetic family, and SmolLM2's text fine-tune ``smollm2-ft``. ``test`` runs every
analysis on the tiny family (the suite's plumbing check).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from experiments import (
    cka,
    evidence,
    gating,
    heatmaps,
    inheritance,
    mllm_conditions,
    mllm_gating,
    real_family,
    tiny_family,
    weight_drift,
)
from experiments._common import FIGURES, PROFILES, Section, write_section
from experiments.results_doc import RESULTS, assemble
from lineage_lens.fileio import atomic_open

log = logging.getLogger(__name__)

#: The experiments in report order.
EXPERIMENTS = (
    inheritance,
    mllm_conditions,
    heatmaps,
    tiny_family,
    weight_drift,
    cka,
    evidence,
    gating,
    mllm_gating,
    real_family,
)


#: The experiments of each profile, in report order, with the keyword arguments of their ``run``
#: (``make demo``: the published scores, then the real MLLM lineage; the tiny family is ``full``'s).
PROFILE_EXPERIMENTS: dict[str, tuple[tuple[ModuleType, dict[str, Any]], ...]] = {
    "test": tuple((m, {}) for m in EXPERIMENTS),
    "demo": (
        (inheritance, {}),
        (heatmaps, {}),
        (mllm_conditions, {}),
        (mllm_gating, {}),
    ),
    "full": tuple((m, {}) for m in EXPERIMENTS),
}


def run_all(
    profile: str,
    figures: Path = FIGURES,
    report_dir: Path | None = None,
    only: list[str] | None = None,
) -> Path:
    """Run the profile's experiments (``only``: these analyses, in full, instead); return the
    path of the markdown report. Each analysis' section is also written beside its figures and
    the results document is assembled from them (:mod:`experiments.results_doc`: the committed
    ``docs/results.md`` when ``figures`` is the committed folder, else ``figures/results.md``)."""
    report_dir = Path(report_dir or Path("runs") / profile)
    planned = PROFILE_EXPERIMENTS[profile]
    if only:
        by_name = {m.__name__.split(".")[-1]: m for m in EXPERIMENTS}
        unknown = sorted(set(only) - set(by_name))
        if unknown:
            raise SystemExit(f"unknown analyses {unknown}; use some of {sorted(by_name)}")
        planned = tuple((by_name[name], {}) for name in only)
    sections: list[Section] = []
    timings = []
    for module, kwargs in planned:
        start = time.perf_counter()
        name = module.__name__.split(".")[-1]
        sections.append(module.run(profile=profile, out_dir=figures, **kwargs))
        write_section(sections[-1], figures, name, profile)
        timings.append((name, time.perf_counter() - start))
        log.info("%s done in %.1f s", *timings[-1])
    figures = Path(figures)
    assemble(figures, RESULTS if figures.resolve() == FIGURES.resolve() else figures / "results.md")
    body = "\n".join(s.render(relative_to=report_dir) for s in sections)
    took = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings)
    total = sum(seconds for _, seconds in timings)
    path = report_dir / "REPORT.md"
    with atomic_open(path, "w") as fh:
        fh.write(
            f"# lineage-lens report (profile {profile})\n\n"
            f"Timings: {took} (total {total / 60:.1f} min).\n\n"
            f"{readings(sections)}\n{body}"
        )
    return path


def readings(sections: list[Section]) -> str:
    """The ``Reading:`` sentence of every section, as the report's opening summary."""
    lines = ["## What held and what did not (one line per analysis)", ""]
    for s in sections:
        found = [ln for ln in s.markdown.splitlines() if ln.startswith("Reading:")]
        if found:  # figure-only sections (e.g. the heatmaps) have none
            lines.append(f"- **{s.title}**: {found[0].removeprefix('Reading:').strip()}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", choices=PROFILES, default="demo")
    parser.add_argument("--figures", type=Path, default=FIGURES)
    parser.add_argument("--report-dir", type=Path, default=None)
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated analyses to run in full instead of the profile's list",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    only = [n.strip() for n in args.only.split(",") if n.strip()] or None
    print(run_all(args.profile, args.figures, args.report_dir, only))


if __name__ == "__main__":
    main()
