"""A photo's way to a model input: loading and refusals (``load``), crop geometry (``crop``), the face networks
and head pose (``faces``), the framing correction (``framing``), matting (``matting``), the editing label map
(``label_map``) and :func:`~perchead.photo.preprocess.preprocess`, which runs them in order."""
