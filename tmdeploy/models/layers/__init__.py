"""Layers shared by the model families: template matching, SGE, ResCNet calibration, residual blocks, heads and
the staged backbone."""

from .conv import conv_bn, conv_bn_relu
from .heads import ClassifierHead, ConvMixHead, linear_head
from .rescnet import ResponseCalibration
from .residual import BasicBlock, Bottleneck, Enhancer
from .sge import SpatialGroupEnhance
from .staged import HeadFactory, StagedNet, make_stages
from .template_matching import ClassSemanticBlock, PixelRMSNorm, TemplateMatching, TMBlock

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ClassSemanticBlock",
    "ClassifierHead",
    "ConvMixHead",
    "Enhancer",
    "HeadFactory",
    "PixelRMSNorm",
    "ResponseCalibration",
    "SpatialGroupEnhance",
    "StagedNet",
    "TMBlock",
    "TemplateMatching",
    "conv_bn",
    "conv_bn_relu",
    "linear_head",
    "make_stages",
]
