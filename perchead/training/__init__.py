"""Training: the Accelerate loop and its tasks (``train``), the losses, and the style encoder's and face
parser's training recipes (``style``, ``parser``).

Training imports the models, the data and the renderer; nothing below imports training.
"""
