"""CondInst: backbone, FPN, FCOS head, dynamic mask head, losses and inference."""

from apis.modeling.condinst import CondInst, build_condinst
from apis.modeling.postprocess import Detections

__all__ = ["CondInst", "Detections", "build_condinst"]
