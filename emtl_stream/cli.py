"""The ``emtl-stream`` command (placeholder, filled in as subsystems land)."""

import sys


def main(argv=None) -> int:
    """Entry point; returns the process exit code."""
    print("emtl-stream: under construction", file=sys.stderr)
    return 2
