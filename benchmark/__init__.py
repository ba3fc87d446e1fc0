"""Spillway's benchmark: ``python -m benchmark`` (see the README's Benchmark section)."""
