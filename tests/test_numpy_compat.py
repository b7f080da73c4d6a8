"""The package runs on the oldest NumPy pyproject.toml allows: no NumPy-2-only names."""

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "emtl_stream"
ROOT = PKG.parent

# Names added to the main namespace (or np.linalg) in NumPy 2.0; each has a 1.x spelling.
NUMPY2_ONLY = {
    "trapezoid", "concat", "astype", "isdtype", "unique_values", "unique_counts",
    "unique_all", "unique_inverse", "vecdot", "matrix_transpose", "permute_dims", "pow",
    "acos", "acosh", "asin", "asinh", "atan", "atanh", "atan2", "bitwise_left_shift",
    "bitwise_right_shift", "bitwise_invert", "cumulative_sum", "cumulative_prod", "long",
    "ulong", "matvec", "vecmat", "StringDType", "dtypes",
}
LINALG2_ONLY = {"vecdot", "matrix_norm", "vector_norm", "matrix_transpose", "svdvals",
                "diagonal", "outer", "trace", "tensordot", "matmul", "cross"}


def _minimum_numpy() -> tuple[int, int]:
    text = (ROOT / "pyproject.toml").read_text()
    major, minor = re.search(r'"numpy>=(\d+)\.(\d+)', text).groups()
    return int(major), int(minor)


def _numpy_attributes(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in ("np", "numpy"):
            yield node.attr, node.lineno, NUMPY2_ONLY
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) \
                and node.value.attr == "linalg" and isinstance(node.value.value, ast.Name) \
                and node.value.value.id in ("np", "numpy"):
            yield node.attr, node.lineno, LINALG2_ONLY


def test_no_numpy_2_only_names_while_numpy_1_is_allowed():
    assert _minimum_numpy() < (2, 0), "pyproject now needs NumPy 2: this test can go"
    offenders = []
    for path in sorted(PKG.rglob("*.py")):
        for name, lineno, banned in _numpy_attributes(ast.parse(path.read_text())):
            if name in banned:
                offenders.append(f"{path.relative_to(ROOT)}:{lineno}: np.{name}")
    assert not offenders, "NumPy >= 2.0 only:\n" + "\n".join(offenders)
