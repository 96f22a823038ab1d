"""Benchmarks: `python -m bench` (inside tests/netns-run; `make bench`)."""
