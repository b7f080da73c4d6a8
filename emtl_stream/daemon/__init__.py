"""Orchestration: the state machine, calibration protocol and the running service."""
