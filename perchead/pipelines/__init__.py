"""Pipelines: photo or tensors in, typed result out (face analysis for preprocessing lives in ``faces``)."""
