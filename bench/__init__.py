"""Benchmarks of every hop: ``make bench`` (``python -m bench``); see ``bench/run.py``."""
