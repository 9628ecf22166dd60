"""Product lines per package at two commits, and what changed them.

    python tools/loc.py [BASE [HEAD]]        (defaults: 5ebd193, before issue 14, and HEAD)

A line counts when it holds code: not blank, not only a comment, not part of a
docstring. Three tables:

1. Per package at BASE and HEAD, and HEAD without the modules that are new features
   (``FEATURE_MODULES``: each with the issue that brought it), so the reader sees what
   became of the functionality BASE already had.
2. The change from BASE to HEAD per package, split by the first-parent commits that
   made it: the structural step (issue 14's merges, ``Merge i14-...``, and the commits
   of a branch named ``i14-...``), the feature merges (``Merge i13-/i15-/i16-/i17-...``),
   and other commits made on the main line directly (fixes, tests; listed).
3. The feature modules at HEAD.

Features also grew modules that already existed (fair share in the listener, signing in
the agent's buffer): table 2 counts those lines with the feature merges, not with the
structural step. Only git and the standard library are used; nothing is written.
"""

from __future__ import annotations

import ast
import io
import re
import subprocess
import sys
import tokenize
from collections import Counter
from collections.abc import Iterable

__all__ = ["FEATURE_MODULES", "PACKAGES", "code_lines", "main"]

#: The product packages.
PACKAGES = ("fluent_forward", "nel_config", "enclave_side", "parent_side", "logverify")

#: Modules that are new features since BASE, not the structural step's reshaping.
FEATURE_MODULES = {
    "enclave_side/nsm.py": "15 signing",
    "enclave_side/proof.py": "15 signing",
    "enclave_side/signing.py": "15 signing",
    "logverify/": "15 signing",
    "parent_side/replay.py": "16 replay window",
    "parent_side/spool_disk.py": "16 disk-full gate",
    "parent_side/fairshare.py": "16 fair share",
    "parent_side/admission.py": "17 slot reserve",
}

_STRUCTURAL = re.compile(r"^Merge i14-")
_FEATURE = re.compile(r"^Merge i1[35-9]-")
_SKIP = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
         tokenize.ENCODING, tokenize.ENDMARKER}


def git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout


def _docstring_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                end = body[0].end_lineno or body[0].lineno
                lines.update(range(body[0].lineno, end + 1))
    return lines


def code_lines(source: str) -> int:
    """Lines of ``source`` that hold code (not blank, comment or docstring)."""
    try:
        docs = _docstring_lines(ast.parse(source))
    except SyntaxError:
        docs = set()
    lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in _SKIP:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return len(lines - docs)


class Repo:
    """Counts per file of a commit, each blob read once."""

    def __init__(self) -> None:
        self._blobs: dict[str, int] = {}

    def files(self, rev: str) -> dict[str, int]:
        """Product ``.py`` files at ``rev`` -> their code lines."""
        listing = git("ls-tree", "-r", rev, "--", *PACKAGES)
        wanted = {}
        for line in listing.splitlines():
            meta, path = line.split("\t", 1)
            if path.endswith(".py"):
                wanted[path] = meta.split()[2]
        missing = [sha for sha in set(wanted.values()) if sha not in self._blobs]
        for sha, text in zip(missing, _read_blobs(missing), strict=True):
            self._blobs[sha] = code_lines(text)
        return {path: self._blobs[sha] for path, sha in wanted.items()}


def _read_blobs(shas: list[str]) -> Iterable[str]:
    if not shas:
        return []
    request = ("\n".join(shas) + "\n").encode()
    out = subprocess.run(["git", "cat-file", "--batch"], input=request, check=True,
                         capture_output=True).stdout
    texts, pos = [], 0
    for _ in shas:
        header_end = out.index(b"\n", pos)
        size = int(out[pos:header_end].split()[2])
        texts.append(out[header_end + 1:header_end + 1 + size].decode("utf-8", "replace"))
        pos = header_end + 1 + size + 1
    return texts


def package_of(path: str) -> str:
    return path.split("/", 1)[0]


def feature_of(path: str) -> str | None:
    for prefix, issue in FEATURE_MODULES.items():
        if path == prefix or (prefix.endswith("/") and path.startswith(prefix)):
            return issue
    return None


def by_package(files: dict[str, int], *, features: bool | None = None) -> Counter[str]:
    totals: Counter[str] = Counter()
    for path, n in files.items():
        if features is None or (feature_of(path) is not None) == features:
            totals[package_of(path)] += n
    return totals


def kind_of(subject: str) -> str:
    if _STRUCTURAL.match(subject):
        return "structural"
    if _FEATURE.match(subject):
        return "features"
    return "other"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w)
                               in enumerate(zip(r, widths, strict=True))) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    base = argv[0] if argv else "5ebd193"
    head = argv[1] if len(argv) > 1 else "HEAD"
    repo = Repo()
    at_base, at_head = repo.files(base), repo.files(head)
    b, h = by_package(at_base), by_package(at_head)
    b_old = by_package(at_base, features=False)
    h_old = by_package(at_head, features=False)
    h_new = by_package(at_head, features=True)
    rows = [["package", base, head, "of which feature modules", "without them",
             "change without them"]]
    for p in (*PACKAGES, "total"):
        base_n, base_old, head_n, new_n, old_n = (sum(c.values()) if p == "total" else c[p]
                                                  for c in (b, b_old, h, h_new, h_old))
        rows.append([p, str(base_n), str(head_n), str(new_n), str(old_n),
                     f"{old_n - base_old:+d}"])
    print(f"## Code lines per package ({base} -> {head})\n")
    print(table(rows))

    branch = git("rev-parse", "--abbrev-ref", head).strip()
    structural_branch = branch.startswith("i14-")
    commits = git("log", "--first-parent", "--reverse", "--format=%H %s",
                  f"{base}..{head}").splitlines()
    change: dict[str, Counter[str]] = {k: Counter() for k in ("structural", "features",
                                                             "other")}
    others: list[str] = []
    merged_base = git("merge-base", head, "main").strip() if structural_branch else ""
    on_branch = set(git("rev-list", f"{merged_base}..{head}").split()) if merged_base else set()
    for line in commits:
        sha, subject = line.split(" ", 1)
        kind = "structural" if sha in on_branch else kind_of(subject)
        before, after = repo.files(f"{sha}^1"), repo.files(sha)
        delta = by_package(after)
        delta.subtract(by_package(before))
        change[kind].update(delta)
        if kind == "other":
            others.append(f"{sha[:7]} {sum(delta.values()):+d} {subject[:90]}")
    rows = [["package", "structural (issue 14)", "feature merges", "other commits", "total"]]
    for p in (*PACKAGES, "total"):
        vals = [sum(change[k].values()) if p == "total" else change[k][p]
                for k in ("structural", "features", "other")]
        rows.append([p, *(f"{v:+d}" for v in vals), f"{sum(vals):+d}"])
    print(f"\n## What changed them: first-parent commits {base}..{head}\n")
    print(table(rows))
    if others:
        print("\nOther commits (net code lines):")
        for o in others:
            print(f"  {o}")
    rows = [["feature module", "issue", "code lines"]]
    for path in sorted(at_head):
        issue = feature_of(path)
        if issue is not None:
            rows.append([path, issue, str(at_head[path])])
    print(f"\n## Feature modules at {head}\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
