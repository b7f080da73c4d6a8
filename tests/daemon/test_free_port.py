"""The test helper that hands out loopback ports.

A port that the kernel could give to an outgoing connection, or hand out twice, makes
a daemon fail to bind at random ("Address already in use").
"""

from __future__ import annotations

import socket

from daemon.conftest import _ephemeral_range, free_port


def test_ports_are_distinct_below_the_ephemeral_range_and_bindable():
    low, _ = _ephemeral_range()
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(1024 < p < low for p in ports), (min(ports), max(ports), low)
    for port in ports[:20]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_in_use_is_skipped():
    port = free_port()
    with socket.socket() as held:
        held.bind(("127.0.0.1", port + 1))
        held.listen()
        # the helper walks up from where it is; a held port must never be returned
        got = [free_port() for _ in range(5)]
    assert port + 1 not in got
