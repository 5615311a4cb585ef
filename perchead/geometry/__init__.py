"""Geometry shared by every stage: Gaussians, cameras, the canonical head template, the 19-class palette.

The bottom layer of the package: these modules import nothing else from perchead.
"""
