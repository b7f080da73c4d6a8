#!/usr/bin/env python3
"""Report public functions whose numpy-style docstring does not name every parameter.

ruff's pydocstyle rules check the form of a docstring (sections, underlines) but
not that a ``Parameters`` section lists the function's actual arguments; this
check does, from the syntax tree alone (nothing is imported, so kernels are not
compiled). A finding is one of:

* a public function or method with arguments but no docstring;
* a docstring with no ``Parameters`` section although the function has arguments;
* a ``Parameters`` section that does not name some argument.

Public means: a module-level function or class whose name has no leading
underscore, and a method of such a class with no leading underscore. A class's
``__init__`` arguments may be documented in the class docstring (the numpy
convention) or in ``__init__``'s own. ``self``/``cls`` are never required;
``*args``/``**kwargs`` may be written with or without their stars. Several names
may share one entry (``fi, fa : ndarray``).

Usage::

    python tools/check_docstrings.py emtl_stream/daemon emtl_stream/io
    python tools/check_docstrings.py            # the whole package

Prints one line per finding (``path:line: name: what``) and exits 1 when there is
any, 0 otherwise.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_SECTION_RE = re.compile(r"^(?P<title>[A-Z][A-Za-z ]+)\n-{3,}\s*$", re.MULTILINE)
_ENTRY_RE = re.compile(r"^(?P<names>\*{0,2}[A-Za-z_][\w]*(?:\s*,\s*\*{0,2}[A-Za-z_][\w]*)*)"
                       r"\s*(?::|$)")


@dataclass(frozen=True)
class Finding:
    """One function whose docstring does not document its parameters.

    Parameters
    ----------
    path : str
        File, relative to the repository root when inside it.
    line : int
        Line of the ``def``.
    name : str
        ``function`` or ``Class.method``.
    message : str
        What is missing.
    """

    path: str
    line: int
    name: str
    message: str

    def __str__(self) -> str:
        """Format as ``path:line: name: message`` (the compiler-error layout)."""
        return f"{self.path}:{self.line}: {self.name}: {self.message}"


def documented_parameters(docstring: str) -> set[str] | None:
    """Collect the names listed in the ``Parameters`` section of a numpy-style docstring.

    Parameters
    ----------
    docstring : str
        The cleaned docstring (``ast.get_docstring``).

    Returns
    -------
    set of str or None
        None when there is no ``Parameters`` section; stars of ``*args`` are dropped.
    """
    sections = list(_SECTION_RE.finditer(docstring))
    names: set[str] | None = None
    for i, match in enumerate(sections):
        if match.group("title").strip() not in ("Parameters", "Other Parameters"):
            continue
        names = names if names is not None else set()
        end = sections[i + 1].start() if i + 1 < len(sections) else len(docstring)
        for line in docstring[match.end():end].splitlines():
            if not line.strip() or line.startswith((" ", "\t")):
                continue  # a description line, indented under its entry
            entry = _ENTRY_RE.match(line.strip())
            if entry:
                names.update(n.strip().lstrip("*") for n in entry.group("names").split(","))
    return names


def _all_parameters(sections: list[set[str] | None]) -> set[str] | None:
    found = [s for s in sections if s is not None]
    return set().union(*found) if found else None


def _arguments(fn: ast.FunctionDef | ast.AsyncFunctionDef, is_method: bool) -> list[str]:
    a = fn.args
    names = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    if a.vararg:
        names.append(a.vararg.arg)
    if a.kwarg:
        names.append(a.kwarg.arg)
    decorators = {d.id for d in fn.decorator_list if isinstance(d, ast.Name)}
    if is_method and names and "staticmethod" not in decorators:
        names = names[1:]  # self, or cls of a classmethod
    return names


def _check(fn, qualname: str, path: str, is_method: bool, extra_doc: str | None = None):
    args = _arguments(fn, is_method)
    if not args:
        return []
    docs = [d for d in (ast.get_docstring(fn), extra_doc) if d]
    if not docs:
        return [Finding(path, fn.lineno, qualname, "no docstring for a function with arguments "
                                                   f"({', '.join(args)})")]
    listed = _all_parameters([documented_parameters(d) for d in docs])
    if listed is None:
        return [Finding(path, fn.lineno, qualname,
                        f"no Parameters section for arguments {', '.join(args)}")]
    missing = [a for a in args if a not in listed]
    if missing:
        return [Finding(path, fn.lineno, qualname,
                        f"Parameters does not name {', '.join(missing)}")]
    return []


def check_file(path: Path) -> list[Finding]:
    """Check one Python source file.

    Parameters
    ----------
    path : Path
        A ``.py`` file.

    Returns
    -------
    list of Finding
        In source order.
    """
    try:
        shown = str(path.resolve().relative_to(ROOT))
    except ValueError:
        shown = str(path)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[Finding] = []
    funcs = (ast.FunctionDef, ast.AsyncFunctionDef)
    for node in tree.body:
        if isinstance(node, funcs) and not node.name.startswith("_"):
            found += _check(node, node.name, shown, is_method=False)
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            class_doc = ast.get_docstring(node)
            for item in node.body:
                if not isinstance(item, funcs):
                    continue
                qual = f"{node.name}.{item.name}"
                if item.name == "__init__":
                    found += _check(item, qual, shown, is_method=True, extra_doc=class_doc)
                elif not item.name.startswith("_"):
                    found += _check(item, qual, shown, is_method=True)
    return found


def check_paths(paths) -> list[Finding]:
    """Check files and directories (searched recursively for ``*.py``).

    Parameters
    ----------
    paths : iterable of str or Path

    Returns
    -------
    list of Finding
    """
    found: list[Finding] = []
    for p in map(Path, paths):
        files = sorted(p.rglob("*.py")) if p.is_dir() else [p]
        for f in files:
            found += check_file(f)
    return found


def main(argv=None) -> int:
    """Command-line entry point; returns the exit status.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name (default ``sys.argv[1:]``).

    Returns
    -------
    int
        1 when any finding was printed, else 0.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("paths", nargs="*", default=[str(ROOT / "emtl_stream")],
                   help="files or directories (default: the emtl_stream package)")
    args = p.parse_args(argv)
    found = check_paths(args.paths)
    for f in found:
        print(f)
    if found:
        print(f"{len(found)} function(s) with undocumented parameters", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
