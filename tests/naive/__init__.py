"""Plain-numpy reference implementations (slow, obvious) that kernels are checked against.

One module per area: ``naive.gmm``, ``naive.transfer``, ``naive.features``.
"""
