"""``emtl-stream ui``: a local web page for the patient and the operator.

:class:`~emtl_stream.ui.server.UiServer` serves one page that follows a running
daemon through its published messages and its control socket (docs/ui.md).
"""

from .server import UiServer

__all__ = ["UiServer"]
