"""Training: one loop (``train``) for every task — ``reconstruct``, ``edit``, ``style``, ``parser``, one module
each — with the run settings and their one preset table (``config``) and the losses.

Training imports the models, the data and the renderer; nothing below imports training.
"""
