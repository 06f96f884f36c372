"""The fast backend: Numba kernels behind the same contract as :mod:`numpymnv2.functional`.

Every name of the reference backend is exported here; an operation without a faster kernel (yet) is the
reference one.
"""
from numpymnv2.functional import *  # noqa: F401,F403  the reference wherever no kernel overrides it
from numpymnv2.functional import __all__  # noqa: F401
