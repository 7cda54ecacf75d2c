"""The paper's analyses, one module per figure; each runs alone as
``python -m experiments.<name> --profile test|demo|full`` and all together from
``python -m experiments.run_all``. Each writes PNGs and the CSV of the plotted numbers into
``figures/`` (or ``--out``) and returns a markdown section for the report."""
