"""Fake devices: the seeded synthetic armband and the replayer that plays it (or a recording).

Neither is I/O of the daemon; they stand in for the user's armband in the demo, the
tests and the benchmarks. The replayer pushes over LSL through :mod:`emtl_stream.io`'s
outlet primitives and follows prompts through the public client.
"""
