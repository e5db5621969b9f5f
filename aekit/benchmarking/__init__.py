"""Benchmarks of exported files: speed per runtime and batch (bench) and reconstruction quality (quality)."""
