"""Evaluation: the metric table, the reconstruction protocol of the paper (§4) with its flat-picture
baselines, and the editing evaluation.

Evaluation imports the models, the pipelines and the data; nothing below imports evaluation.
"""
