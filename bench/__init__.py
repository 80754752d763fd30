"""Benchmarks and the cost simulation. Each module is a script: `python -m bench.<name> --help`."""
