"""CIFAR-style ResNets (RN26, RN38) and RN26's variants: template matching, SGE, ResCNet, ConvMix.

Chosen config (the seed papers give only parameter counts: RN26 0.96M + 257C, RN38 1.42M + 257C):

* 3×3 stem conv to 32 channels (Conv→BN→ReLU), then three stages of post-activation bottleneck blocks
  (1×1 → 3×3 → 1×1, each Conv→BN, ReLU between and after the add) with output widths 64/128/256 at
  32×32 / 16×16 / 8×8; a 1×1 conv + BN shortcut where the shape changes.
* Depth counts the stem, three convs per block and the classifier: RN26 has 2+2+4 = 8 blocks
  (1 + 24 + 1 layers), RN38 has 3+3+6 = 12 (1 + 36 + 1).
* Bottleneck widths 16/48/128 (out/4, 3·out/8, out/2). With the usual out/2 everywhere the nets come out
  5–6 % over the seed counts; these widths land within 0.5 % (RN26 0.957M, RN38 1.423M without the
  classifier) and keep the final width 256, so the classifier is the seed's 256C + C.
* ``-aux`` adds the training-only per-patch classifier h2 (1×1 conv, 128C + C) on the 128-wide stage-2
  map (16×16); ``-cls`` puts a :class:`ClassSemanticBlock` there instead (128C + C templates, 128C values,
  μ, τ), whose template scores are the patch logits.
* ``rn26-tm``: same stages and widths with every bottleneck replaced by a :class:`TMBlock` (K = block
  output width), and a biased stem conv: no BatchNorm anywhere, no batch statistics. It has 2.69M
  parameters, not 0.96M: each TMBlock's 3×3 template conv runs at the full block width where the
  bottleneck's 3×3 ran at 16/48/128 (``create("rn26-tm", template_ratio=0.5)`` builds a slimmer variant).
* ``rn26-sge`` / ``rn26-rescnet``: SGE (G = 8, divides 64/128/256) or ResCNet calibration (r = 4) after
  the last BN of every residual branch, before the add. ``rn26-convmix``: ConvMix head over all stages.

All variants are one :class:`StagedNet` (``layers/``) with a pluggable block, branch enhancer and head.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from .layers import (Bottleneck, ConvMixHead, Enhancer, HeadFactory, ResponseCalibration, SpatialGroupEnhance,
                     StagedNet, TMBlock, conv_bn_relu, linear_head, make_stages)
from .registry import register_model

RN_STEM = 32
RN_WIDTHS = (64, 128, 256)
RN_BOTTLENECK_WIDTHS = (16, 48, 128)
RN_DEPTHS = {26: (2, 2, 4), 38: (3, 3, 6)}


def _resnet(depth: int, num_classes: int, in_chans: int, patch: str | None = None,
            enhancer: Enhancer | None = None, head: HeadFactory = linear_head) -> StagedNet:
    stages = make_stages(Bottleneck, RN_STEM, RN_WIDTHS, RN_DEPTHS[depth],
                         stage_kwargs=[{"width": w} for w in RN_BOTTLENECK_WIDTHS], enhancer=enhancer)
    return StagedNet(conv_bn_relu(in_chans, RN_STEM, 3), stages, RN_WIDTHS, num_classes, in_chans,
                     head=head, patch=patch)


@register_model("rn26")
def rn26(num_classes: int = 10, in_chans: int = 3) -> StagedNet:
    return _resnet(26, num_classes, in_chans)


@register_model("rn26-aux")
def rn26_aux(num_classes: int = 10, in_chans: int = 3) -> StagedNet:
    return _resnet(26, num_classes, in_chans, patch="aux")


@register_model("rn26-cls")
def rn26_cls(num_classes: int = 10, in_chans: int = 3) -> StagedNet:
    return _resnet(26, num_classes, in_chans, patch="cls")


@register_model("rn38")
def rn38(num_classes: int = 10, in_chans: int = 3) -> StagedNet:
    return _resnet(38, num_classes, in_chans)


@register_model("rn38-aux")
def rn38_aux(num_classes: int = 10, in_chans: int = 3) -> StagedNet:
    return _resnet(38, num_classes, in_chans, patch="aux")


@register_model("rn38-cls")
def rn38_cls(num_classes: int = 10, in_chans: int = 3) -> StagedNet:
    return _resnet(38, num_classes, in_chans, patch="cls")


def _rn26_tm(num_classes: int, in_chans: int, template_ratio: float = 1.0, legacy: bool = False,
             patch: str | None = None) -> StagedNet:
    """RN26's stages with every bottleneck a :class:`TMBlock`: no BatchNorm, no batch statistics.

    Each block reduces to the bottleneck width (16/48/128), RMS-normalises per pixel and matches
    K = ``template_ratio`` × that width 3×3 templates, so K = width costs what the BN bottleneck costs;
    the head RMS-normalises per pixel before pooling. ``legacy=True`` builds the first configuration
    (K = ``template_ratio`` × the block's output width, templates on the raw full-width input, no
    normalisation anywhere): it trains to about 23 % on digits and is kept only for comparison.
    """
    if legacy:
        stage_kwargs = [{"num_templates": max(1, round(w * template_ratio)), "input_norm": False} for w in RN_WIDTHS]
    else:
        stage_kwargs = [{"width": w, "num_templates": max(1, round(w * template_ratio))} for w in RN_BOTTLENECK_WIDTHS]
    stem = nn.Conv2d(in_chans, RN_STEM, 3, padding=1, bias=True)
    stages = make_stages(TMBlock, RN_STEM, RN_WIDTHS, RN_DEPTHS[26], stage_kwargs=stage_kwargs)
    return StagedNet(stem, stages, RN_WIDTHS, num_classes, in_chans, head=partial(linear_head, pixel_norm=not legacy),
                     patch=patch, patch_norm=not legacy)


@register_model("rn26-tm")
def rn26_tm(num_classes: int = 10, in_chans: int = 3, template_ratio: float = 1.0, legacy: bool = False) -> StagedNet:
    return _rn26_tm(num_classes, in_chans, template_ratio, legacy)


@register_model("rn26-tm-cls")
def rn26_tm_cls(num_classes: int = 10, in_chans: int = 3, template_ratio: float = 1.0) -> StagedNet:
    """``rn26-tm`` with the class-semantic block and its auxiliary loss: the statistics-free "-Ours"."""
    return _rn26_tm(num_classes, in_chans, template_ratio, patch="cls")


@register_model("rn26-sge")
def rn26_sge(num_classes: int = 10, in_chans: int = 3, groups: int = 8) -> StagedNet:
    return _resnet(26, num_classes, in_chans, enhancer=partial(SpatialGroupEnhance, groups=groups))


@register_model("rn26-rescnet")
def rn26_rescnet(num_classes: int = 10, in_chans: int = 3, reduction: int = 4) -> StagedNet:
    return _resnet(26, num_classes, in_chans, enhancer=partial(ResponseCalibration, reduction=reduction))


@register_model("rn26-convmix")
def rn26_convmix(num_classes: int = 10, in_chans: int = 3, width: int | None = None) -> StagedNet:
    return _resnet(26, num_classes, in_chans, head=partial(ConvMixHead, width=width))
