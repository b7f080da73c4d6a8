"""Source models and transfer EM: numpy/scipy wrappers around :mod:`emtl_stream.kernels`."""
