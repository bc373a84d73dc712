"""The project's one benchmark command: every figure beside its baseline, in one run.

    .venv/bin/python -m tests.benchmarks [--quick] [--only ROW ...] [--out DIR]

Rows live in the modules of this package (see `core.row`); nothing here is collected by pytest.
"""
