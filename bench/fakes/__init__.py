"""Fakes of the remote services (Discord, Pixabay, Openverse) and the synthetic scenes they serve.

They live here, not under tests/, because the benchmark, the tests and ``make demo`` all run
the product against them, and bench/ is the importable harness that is not shipped in the
wheel (setuptools includes only ``search*`` and ``bot*``).
"""
