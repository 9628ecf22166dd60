"""Every module declares its API, and the shared codec stays free of I/O imports.

Walks the package directories with ``pkgutil`` so a new module is checked without
editing this file. ``__main__`` modules are two-line entry points (STYLE 12) that run
the program on import; they are skipped. An empty ``__init__.py`` exports nothing.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
from pathlib import Path
from types import ModuleType

import pytest

PACKAGES = ["fluent_forward", "nel_config", "enclave_side", "parent_side", "logverify"]
IO_MODULES = {"asyncio", "socket"}
#: The one module in fluent_forward allowed to touch sockets and the event loop.
IO_SEAM = "fluent_forward.aio"


def module_names() -> list[str]:
    names = []
    for package in PACKAGES:
        pkg = importlib.import_module(package)
        if Path(pkg.__file__ or "").read_text().strip():
            names.append(package)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}."):
            # Compiled extensions (the C entry check) have no Python source to read;
            # tests/unit/test_entrycheck.py covers that one.
            spec = importlib.util.find_spec(info.name)
            if (info.name.rsplit(".", 1)[-1] != "__main__" and spec is not None
                    and str(spec.origin).endswith(".py")):
                names.append(info.name)
    return names


MODULES = module_names()


def source_of(module: ModuleType) -> ast.Module:
    assert module.__file__ is not None
    return ast.parse(Path(module.__file__).read_text(), filename=module.__file__)


def has_future_annotations(tree: ast.Module) -> bool:
    return any(isinstance(node, ast.ImportFrom) and node.module == "__future__"
               and any(alias.name == "annotations" for alias in node.names)
               for node in tree.body)


def imported_modules(tree: ast.Module, package: str) -> set[str]:
    """Absolute names of every module imported anywhere in ``tree``."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
                found.add(mod)
                found.update(f"{mod}.{alias.name}" for alias in node.names)
            else:
                found.add(node.module or "")
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def touches_io(tree: ast.Module, package: str) -> set[str]:
    return {name for name in imported_modules(tree, package)
            if name.split(".")[0] in IO_MODULES or name == IO_SEAM
            or name.startswith(IO_SEAM + ".")}


def test_the_walk_finds_the_modules() -> None:
    for name in ("fluent_forward.codec", "fluent_forward.aio", "enclave_side.cli",
                 "parent_side.cli"):
        assert name in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_module_has_future_annotations(name: str) -> None:
    assert has_future_annotations(source_of(importlib.import_module(name))), (
        f"{name} lacks `from __future__ import annotations`")


@pytest.mark.parametrize("name", MODULES)
def test_module_all_names_exist(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert isinstance(exported, list | tuple)
    assert len(set(exported)) == len(exported), f"{name}.__all__ has duplicates"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names missing attributes: {missing}"


FF_MODULES = [n for n in MODULES if n.split(".")[0] == "fluent_forward" and n != IO_SEAM]


@pytest.mark.parametrize("name", FF_MODULES)
def test_shared_codec_imports_neither_asyncio_nor_socket(name: str) -> None:
    module = importlib.import_module(name)
    assert not touches_io(source_of(module), module.__package__ or ""), (
        f"{name} imports I/O; only {IO_SEAM} may")


def test_the_io_check_can_fail() -> None:
    for src in ("import asyncio", "import socket as s", "from asyncio import sleep",
                "from socket import AF_VSOCK", "import asyncio.streams",
                "from . import aio", "from .aio import connect",
                "def f():\n    import socket\n"):
        assert touches_io(ast.parse(src), "fluent_forward"), src
    assert not touches_io(ast.parse("import zlib\nfrom .codec import x"), "fluent_forward")
    assert IO_MODULES <= touches_io(
        ast.parse(Path(importlib.import_module(IO_SEAM).__file__ or "").read_text()),
        "fluent_forward")


def test_the_future_check_can_fail() -> None:
    assert not has_future_annotations(ast.parse('"""doc"""\nimport os\n'))
    assert has_future_annotations(ast.parse('"""doc"""\nfrom __future__ import annotations\n'))
