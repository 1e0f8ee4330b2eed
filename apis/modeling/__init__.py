"""CondInst: backbone, FPN, FCOS head, dynamic mask head, losses and inference."""

from apis.modeling.condinst import CondInst, NetworkOutputs, build_condinst
from apis.modeling.condinst_loss import CondInstLoss
from apis.modeling.postprocess import Detections

__all__ = ["CondInst", "CondInstLoss", "Detections", "NetworkOutputs", "build_condinst"]
