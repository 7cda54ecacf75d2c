"""Execute ``notebooks/quickstart.ipynb`` in place, so it is committed with its outputs and a
reader sees every table and plot without running it (``make notebook``).

The test suite executes the same notebook (``tests/test_notebook.py``) and checks that the
committed copy holds outputs and plots and no error.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import NATIVE_KERNEL_NAME
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent / "quickstart.ipynb"


def main() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    with tempfile.TemporaryDirectory(prefix="quickstart-") as tmp:
        NotebookClient(
            nb, timeout=600, kernel_name=NATIVE_KERNEL_NAME, resources={"metadata": {"path": tmp}}
        ).execute()
    nbformat.write(nb, NOTEBOOK)
    print(NOTEBOOK)


if __name__ == "__main__":
    main()
