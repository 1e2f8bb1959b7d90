"""Benchmarks: `python -m labkit.bench.<name>`. Ratios against a peer measured in the same run;
figures go to benchmarks/RESULTS.md with machine and date. Never timed assertions in tests."""
