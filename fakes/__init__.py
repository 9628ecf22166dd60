"""Fakes that the tests and the benchmarks both use (neither imports the other)."""
