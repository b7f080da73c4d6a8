"""Everything that touches a stream, a socket or a file. Never imports model or daemon."""
