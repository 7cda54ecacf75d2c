"""The old name of :mod:`lineage_lens.fileio`, for the library modules not yet importing it from
there (models, cli.compare, cli._checks, evals.runner); import from :mod:`lineage_lens.fileio`."""

from lineage_lens.fileio import (
    atomic_open,
    atomic_path,
    check_output_path,
    publish_dir,
    sigterm_as_exit,
    sweep_stale_tmp_dirs,
    tmp_build_dir,
    tmp_prefix,
)

__all__ = [
    "atomic_open",
    "atomic_path",
    "check_output_path",
    "publish_dir",
    "sigterm_as_exit",
    "sweep_stale_tmp_dirs",
    "tmp_build_dir",
    "tmp_prefix",
]
