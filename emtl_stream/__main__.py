"""``python -m emtl_stream`` is the ``emtl-stream`` command."""

import sys

from .cli import main

sys.exit(main())
