"""Moved to ``enclave_side.sources.child``; kept so existing imports work."""

from __future__ import annotations

from .sources.child import FORWARDED_SIGNALS, ExitStatus, PipeSource, Reaper, spawn

__all__ = ["FORWARDED_SIGNALS", "ExitStatus", "PipeSource", "Reaper", "spawn"]
