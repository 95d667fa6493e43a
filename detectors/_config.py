"""Numba compile flags, in one place.

``cache=True`` so Beam workers load compiled kernels from disk instead of recompiling;
``nogil=True`` so kernels run in parallel threads of one worker. No ``fastmath``: it
silently breaks NaN/inf handling.
"""

import functools

import numba

njit = functools.partial(numba.njit, cache=True, nogil=True, fastmath=False)
