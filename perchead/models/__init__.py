"""The networks: encoders, 3D decoder, Gaussian head, refiner, the two models built from them, and the
style encoder and face parser that the editing pipeline wraps.

Models import only :mod:`perchead.geometry` and :mod:`perchead.render` from the rest of the package.
"""
