"""Every public function's numpy docstring names its parameters (tools/check_docstrings.py)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKER = ROOT / "tools" / "check_docstrings.py"

#: Packages held to the rule; widen this list as more packages are brought in line.
CHECKED = ["emtl_stream/kernels", "emtl_stream/model", "emtl_stream/pipeline"]


def _checker():
    spec = importlib.util.spec_from_file_location("check_docstrings", CHECKER)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, mod)  # its dataclass looks its module up there
    spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules[spec.name]


@pytest.mark.parametrize("package", CHECKED)
def test_public_functions_document_every_parameter(package):
    found = _checker().check_paths([ROOT / package])
    assert not found, "\n".join(map(str, found))


BAD = '''
def undocumented(a, b):
    return a


def no_section(a):
    """Summary only."""


def partly(alpha, beta, *args, **kwargs):
    """Summary.

    Parameters
    ----------
    alpha : int
    *args
        Extra positional arguments.
    """


class Public:
    """A class whose __init__ arguments are documented nowhere."""

    def __init__(self, size):
        self.size = size

    def method(self, x):
        """Summary.

        Returns
        -------
        int
        """

    def _private(self, y):
        pass


def _private(z):
    pass
'''

GOOD = '''
def shared_entry(fi, fa, *args, **kwargs):
    """Summary.

    Parameters
    ----------
    fi, fa : ndarray of shape (p,)
        Row and column indices.
    *args, **kwargs
        Passed on.
    """


def no_arguments():
    pass


class Documented:
    """Numpy convention: the class docstring documents __init__.

    Parameters
    ----------
    size : int
    """

    def __init__(self, size):
        self.size = size

    @staticmethod
    def helper(x):
        """Summary.

        Parameters
        ----------
        x : float
        """

    @property
    def double(self):
        return 2 * self.size
'''


def test_checker_reports_each_kind_of_gap_and_exits_1(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(BAD)
    found = {f.name: f.message for f in _checker().check_paths([tmp_path])}
    assert set(found) == {"undocumented", "no_section", "partly", "Public.__init__",
                          "Public.method"}
    assert "no docstring" in found["undocumented"]
    assert "no Parameters section" in found["no_section"]
    assert found["partly"] == "Parameters does not name beta, kwargs"
    assert "size" in found["Public.__init__"] and "x" in found["Public.method"]
    run = subprocess.run([sys.executable, str(CHECKER), str(bad)], capture_output=True,
                         text=True)
    assert run.returncode == 1 and run.stdout.count("bad.py:") == 5


def test_checker_accepts_numpy_conventions_and_exits_0(tmp_path):
    good = tmp_path / "good.py"
    good.write_text(GOOD)
    assert _checker().check_paths([good]) == []
    run = subprocess.run([sys.executable, str(CHECKER), str(good)], capture_output=True,
                         text=True)
    assert run.returncode == 0 and run.stdout == ""


@pytest.mark.parametrize("package", CHECKED)
def test_ruff_docstring_and_line_rules_pass(package):
    """ruff with the project's rules (pydocstyle numpy convention, E501) finds nothing."""
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise",
                           str(ROOT / package)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
