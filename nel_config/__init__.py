"""Configuration machinery both sides of nitro-enclave-logs share (stdlib only).

An option is declared once, on its side's configuration dataclass (``options``);
the argument parser, the environment, the TOML file, the effective-configuration dump,
what a reload applies, and the README's option tables derive from that declaration
(``argv``, tools/gen_config_reference.py). ``units`` reads and shows sizes and
durations. This is not protocol code, so it lives beside ``fluent_forward``, not in
it; the agent and the relay import it, and it imports neither.
"""

from __future__ import annotations

__all__: list[str] = []
