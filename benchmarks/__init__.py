"""Benchmarks: scripts that print tables and save JSON (never timed tests)."""
