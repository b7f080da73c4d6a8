"""The control-command table agrees with the protocol's command list."""

import inspect

from emtl_stream.daemon.handlers import HANDLERS
from emtl_stream.io import protocol


def test_every_command_has_a_handler_and_nothing_else():
    assert set(HANDLERS) == set(protocol.COMMANDS)


def test_handler_parameters_are_the_protocol_fields():
    for cmd, fn in HANDLERS.items():
        params = list(inspect.signature(fn).parameters)
        assert params[0] == "daemon", cmd
        assert set(params[1:]) == set(protocol.COMMANDS[cmd]), cmd
