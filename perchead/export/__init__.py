"""What a head becomes for a user: files (``.ply``, ``.splat``, ``.glb``), fixed views and a turntable video,
written together by :func:`write_outputs`."""

from perchead.export.outputs import Outputs, write_outputs

__all__ = ["Outputs", "write_outputs"]
