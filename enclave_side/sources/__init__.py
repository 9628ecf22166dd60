"""Where the agent's records come from: the app's output, files, the kernel, Forward clients."""

from __future__ import annotations

__all__: list[str] = []
