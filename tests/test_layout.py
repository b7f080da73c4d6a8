"""Architecture checks: imports go one way, JIT options live in one place."""

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "emtl_stream"

# Which first-party subpackages each layer may import. Root modules (errors,
# logs, _checks, config) are shared by all layers except kernels.
ROOT_SHARED = {"errors", "logs", "_checks", "config", "_atomic"}
ALLOWED = {
    "kernels": {"kernels"},
    "pipeline": {"pipeline", "kernels"} | ROOT_SHARED,
    "model": {"model", "kernels"} | ROOT_SHARED,
    # io is sockets, streams and files only: no numerics beyond dtype/shape checks.
    "io": {"io"} | ROOT_SHARED,
    # Fake devices (synthetic armband, replayer) push through io's outlets and client.
    "sim": {"sim", "io"} | ROOT_SHARED,
    "daemon": {"daemon", "model", "pipeline", "io", "kernels"} | ROOT_SHARED,
    # The web page talks to the daemon only through its sockets (io.client).
    "ui": {"ui", "io", "config", "logs", "errors"},
}


def _first_party_targets(path: Path):
    """Yield the first-party top-level module each import in ``path`` resolves to."""
    rel = path.relative_to(PKG).with_suffix("")
    package_parts = list(rel.parts[:-1])
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "emtl_stream" and len(parts) > 1:
                    yield parts[1], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] != "emtl_stream":
                    continue
                if len(parts) > 1:
                    yield parts[1], node.lineno
                else:
                    for alias in node.names:
                        yield alias.name, node.lineno
            else:
                base = package_parts[: len(package_parts) - (node.level - 1)]
                parts = base + (node.module.split(".") if node.module else [])
                if parts:
                    yield parts[0], node.lineno
                else:
                    for alias in node.names:
                        yield alias.name, node.lineno


def _layer_files():
    for layer in ALLOWED:
        for path in sorted((PKG / layer).rglob("*.py")):
            yield layer, path


@pytest.mark.parametrize("layer,path", list(_layer_files()), ids=lambda v: str(v))
def test_imports_go_one_way(layer, path):
    for target, lineno in _first_party_targets(path):
        assert target in ALLOWED[layer], (
            f"{path.relative_to(PKG.parent)}:{lineno} imports emtl_stream.{target}, "
            f"which the {layer} layer must not depend on"
        )


def test_kernels_import_only_numpy_numba_and_jit_options():
    for path in (PKG / "kernels").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods = [(node.module or "").split(".")[0]]
            else:
                continue
            for mod in mods:
                assert mod in {"numpy", "numba", "math", "__future__"}, (
                    f"{path.name}:{node.lineno} imports {mod}; kernels stay pure"
                )


def test_no_hard_coded_jit_options_outside_jit_module():
    pattern = re.compile(r"fastmath\s*=|@(numba\.)?(njit|jit)\b")
    offenders = []
    for path in PKG.rglob("*.py"):
        if path.name == "_jit.py":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(PKG)}:{i}: {line.strip()}")
    assert not offenders, "use kernels._jit.kernel instead:\n" + "\n".join(offenders)


def test_fastmath_flags_keep_nan_and_inf_semantics():
    from emtl_stream.kernels._jit import FASTMATH_FLAGS, JIT_OPTIONS

    assert "nnan" not in FASTMATH_FLAGS and "ninf" not in FASTMATH_FLAGS
    assert "fast" not in FASTMATH_FLAGS
    assert JIT_OPTIONS["cache"] is True and "nopython" not in JIT_OPTIONS  # njit implies it


def test_every_kernel_is_a_cached_nopython_dispatcher():
    import importlib
    import pkgutil

    from numba.core.registry import CPUDispatcher

    import emtl_stream.kernels as kpkg
    from emtl_stream.kernels._jit import FASTMATH_FLAGS

    n = 0
    for info in pkgutil.iter_modules(kpkg.__path__):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"emtl_stream.kernels.{info.name}")
        for name, obj in vars(mod).items():
            if isinstance(obj, CPUDispatcher) and obj.__module__ == mod.__name__:
                n += 1
                opts = obj.targetoptions
                assert opts.get("nopython") is True, f"{info.name}.{name} is not nopython"
                assert type(obj._cache).__name__ == "FunctionCache", f"{name} is not cache=True"
                flags = set(opts.get("fastmath") or ())
                assert flags == set(FASTMATH_FLAGS), f"{info.name}.{name} fastmath {flags}"
    assert n > 10, f"found only {n} kernels"


def test_no_pickle_or_eval_anywhere():
    pattern = re.compile(r"\bimport pickle\b|\bpickle\.|allow_pickle\s*=\s*True|\beval\(|\bexec\(")
    offenders = []
    for path in PKG.rglob("*.py"):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(PKG)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_only_io_imports_pylsl_and_only_io_or_daemon_imports_zmq():
    offenders = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG)
        text = path.read_text()
        if rel.parts[0] != "io" and re.search(r"^\s*(import|from)\s+pylsl\b", text, re.M):
            offenders.append(f"{rel} imports pylsl")
        if rel.parts[0] not in ("io", "daemon") and re.search(
            r"^\s*(import|from)\s+zmq\b", text, re.M
        ):
            offenders.append(f"{rel} imports zmq")
    assert not offenders, offenders


def test_importing_the_package_compiles_nothing_and_opens_nothing():
    import subprocess
    import sys

    code = (
        "import sys, emtl_stream; "
        "bad = [m for m in ('numba', 'zmq', 'pylsl') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import emtl_stream pulled in {out.stdout.strip()}"
