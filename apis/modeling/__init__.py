"""The models: CondInst (backbone, FPN, FCOS head, dynamic mask head, losses, inference) and Mask R-CNN trained
from points; :func:`build_model` builds the one ``model.arch`` names."""

from apis.modeling.build import build_model
from apis.modeling.condinst import CondInst, NetworkOutputs
from apis.modeling.condinst_loss import CondInstLoss
from apis.modeling.mask_rcnn import MaskRCNNPoints
from apis.modeling.postprocess import Detections

__all__ = ["CondInst", "CondInstLoss", "Detections", "MaskRCNNPoints", "NetworkOutputs", "build_model"]
