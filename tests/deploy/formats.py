"""Small parsers for the deployment files, so tests can read them as their tools do.

- systemd unit files (sections, repeated keys, line continuations),
- Fluent Bit's classic format (sections, ``Key value``, ``@INCLUDE``, ``@SET``,
  indentation rules; reference/forward-protocol.md §3),
- Dockerfiles (instructions, exec-form JSON, stages).

Each parser is strict where the real tool is strict, so a file that passes here does
not fail there for a reason these tests could have seen.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ClassicConfig",
    "ClassicError",
    "ClassicSection",
    "DockerInstruction",
    "expand_variables",
    "parse_classic",
    "parse_dockerfile",
    "parse_unit",
    "stages",
]

# --- systemd units ---------------------------------------------------------------


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """``{section: [(key, value), ...]}`` in file order; keys may repeat."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        if current is None or "=" not in line:
            raise ValueError(f"not a unit file line: {raw!r}")
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


# --- Fluent Bit classic format ---------------------------------------------------


class ClassicError(ValueError):
    """A classic-format file Fluent Bit would refuse."""


@dataclass
class ClassicSection:
    """One ``[NAME]`` section: ``entries`` keep order and repeats; keys are lower-cased."""

    name: str
    entries: list[tuple[str, str]] = field(default_factory=list)
    source: str = ""

    def get(self, key: str) -> str | None:
        values = self.all(key)
        return values[-1] if values else None

    def all(self, key: str) -> list[str]:
        return [v for k, v in self.entries if k == key.lower()]

    def as_dict(self) -> dict[str, str]:
        return dict(self.entries)


@dataclass
class ClassicConfig:
    sections: list[ClassicSection] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    def named(self, name: str) -> list[ClassicSection]:
        return [s for s in self.sections if s.name == name.upper()]


_SECTION = re.compile(r"^\[([A-Za-z_]+)\]$")


def parse_classic(path: Path, config: ClassicConfig | None = None,
                  root: Path | None = None) -> ClassicConfig:
    """Parse a classic file and, recursively, what it ``@INCLUDE``s.

    As in Fluent Bit's reader (src/config_format/flb_cf_fluentbit.c): a relative
    include is looked up in the main file's directory; a file may not be read twice;
    the first indented line sets the file's indentation and every entry line in that
    file must use exactly it; comments may be indented; keys have values.
    """
    config = ClassicConfig() if config is None else config
    root = path.parent if root is None else root
    if any(path.resolve() == seen.resolve() for seen in config.files):
        raise ClassicError(f"{path.name}: read twice")
    config.files.append(path)
    section: ClassicSection | None = None
    indent: str | None = None
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        where = f"{path.name}:{number}"
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        line = raw.strip()
        if raw.startswith("@"):
            command, _, arg = line.partition(" ")
            arg = arg.strip()
            if command.upper() == "@INCLUDE":
                target = Path(arg) if Path(arg).is_absolute() else root / arg
                parse_classic(target, config, root)
            elif command == "@SET":
                key, eq, value = arg.partition("=")
                if not eq or not key:
                    raise ClassicError(f"{where}: @SET KEY=VALUE")
                config.variables[key.strip()] = value.strip()
            else:
                raise ClassicError(f"{where}: unknown command {command}")
            section = None
            continue
        match = _SECTION.match(line)
        if match and raw[0] == "[":
            section = ClassicSection(match.group(1).upper(), source=where)
            config.sections.append(section)
            continue
        this_indent = raw[: len(raw) - len(raw.lstrip())]
        if line.startswith("@"):
            raise ClassicError(f"{where}: commands go at the top level")
        if section is None:
            raise ClassicError(f"{where}: entry outside a section")
        if not this_indent:
            raise ClassicError(f"{where}: entries must be indented")
        if indent is None:
            if " " in this_indent and "\t" in this_indent:
                raise ClassicError(f"{where}: inconsistent use of tab and space")
            indent = this_indent
        elif this_indent != indent:
            raise ClassicError(f"{where}: invalid indentation level")
        key, _, value = line.partition(" ")
        if not value.strip():
            raise ClassicError(f"{where}: {key} has no value")
        section.entries.append((key.lower(), value.strip()))
    return config


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_variables(value: str, variables: dict[str, str]) -> str:
    """Replace ``${NAME}`` as Fluent Bit does; a name not in ``variables`` is an error here."""
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in variables:
            raise KeyError(f"${{{name}}} is not set in the file")
        return variables[name]
    return _VARIABLE.sub(one, value)


# --- Dockerfiles -----------------------------------------------------------------


@dataclass(frozen=True)
class DockerInstruction:
    """One instruction: ``exec_form`` holds the JSON array when the argument is one."""

    keyword: str
    argument: str
    line: int

    @property
    def exec_form(self) -> list[str] | None:
        text = self.argument.strip()
        if not text.startswith("["):
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return None  # Docker falls back to shell form for invalid JSON
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        return None

    def words(self) -> list[str]:
        return self.exec_form or shlex.split(self.argument)


def parse_dockerfile(text: str) -> list[DockerInstruction]:
    out: list[DockerInstruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continuation are dropped, as Docker does
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        line = pending + stripped
        pending = ""
        keyword, _, argument = line.partition(" ")
        out.append(DockerInstruction(keyword.upper(), argument.strip(), start))
    if pending:
        raise ValueError("Dockerfile ends inside a line continuation")
    return out


def stages(instructions: list[DockerInstruction]) -> list[list[DockerInstruction]]:
    """Instructions grouped by build stage (each starts with FROM)."""
    result: list[list[DockerInstruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            result.append([])
        if not result:
            if ins.keyword == "ARG":
                continue
            raise ValueError("instruction before FROM")
        result[-1].append(ins)
    return result
