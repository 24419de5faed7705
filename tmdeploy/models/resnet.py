"""CIFAR-style ResNets (RN26, RN38) and the shared staged backbone used by every architecture here.

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

All variants are one :class:`StagedNet` with a pluggable block, branch enhancer and head.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Sequence

from torch import Tensor, nn

from .convmix import ClassifierHead, ConvMixHead
from .registry import register_model
from .rescnet import ResponseCalibration
from .sge import SpatialGroupEnhance
from .template_matching import ClassSemanticBlock, TMBlock

Enhancer = Callable[[int], nn.Module]  # channels -> module applied to a residual branch before the add
HeadFactory = Callable[[Sequence[int], int], nn.Module]  # (stage widths, num_classes) -> head

PATCH_MODES = (None, "aux", "cls")


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    )


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(*conv_bn(in_channels, out_channels, kernel_size, stride), nn.ReLU())


def linear_head(widths: Sequence[int], num_classes: int, pixel_norm: bool = False) -> nn.Module:
    return ClassifierHead(widths[-1], num_classes, pixel_norm=pixel_norm)


class _Residual(nn.Module):
    """``relu(enhance(branch(x)) + shortcut(x))``; subclasses build the branch (ending in a BN)."""

    def __init__(self, branch: nn.Module, in_channels: int, out_channels: int, stride: int,
                 enhancer: Enhancer | None) -> None:
        super().__init__()
        self.branch = branch
        self.enhance = enhancer(out_channels) if enhancer else nn.Identity()
        if in_channels == out_channels and stride == 1:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = conv_bn(in_channels, out_channels, 1, stride)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.enhance(self.branch(x)) + self.shortcut(x))


class BasicBlock(_Residual):
    """Two 3×3 Conv→BN (ReLU between), as in the (wide) ResNet basic block."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 enhancer: Enhancer | None = None) -> None:
        branch = nn.Sequential(conv_bn_relu(in_channels, out_channels, 3, stride),
                               conv_bn(out_channels, out_channels, 3))
        super().__init__(branch, in_channels, out_channels, stride, enhancer)


class Bottleneck(_Residual):
    """1×1 reduce to ``width`` → 3×3 (carries the stride) → 1×1 expand, each Conv→BN."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, width: int | None = None,
                 enhancer: Enhancer | None = None) -> None:
        width = width or out_channels // 2
        branch = nn.Sequential(conv_bn_relu(in_channels, width, 1),
                               conv_bn_relu(width, width, 3, stride),
                               conv_bn(width, out_channels, 1))
        super().__init__(branch, in_channels, out_channels, stride, enhancer)


def make_stages(block: Callable[..., nn.Module], in_channels: int, widths: Sequence[int],
                depths: Sequence[int], strides: Sequence[int] = (1, 2, 2),
                stage_kwargs: Sequence[dict] | None = None, **kwargs) -> list[nn.Sequential]:
    """One ``nn.Sequential`` of ``block(in, out, stride, **kwargs)`` per stage; the first block strides."""
    stages = []
    for i, (width, depth, stride) in enumerate(zip(widths, depths, strides)):
        extra = {**kwargs, **(stage_kwargs[i] if stage_kwargs else {})}
        blocks = [block(in_channels if j == 0 else width, width, stride if j == 0 else 1, **extra)
                  for j in range(depth)]
        stages.append(nn.Sequential(*blocks))
        in_channels = width
    return stages


class StagedNet(nn.Module):
    """``stem → stages → head``, with an optional per-patch class head after stage ``tap``.

    ``patch``: ``None``; ``"aux"`` — a training-only 1×1 conv classifier h2 on the tap map, used only by
    :meth:`forward_with_patch_logits`; ``"cls"`` — a :class:`ClassSemanticBlock` in the inference path
    whose template scores are the patch logits (``patch_norm``: matched on the RMS-normalised map, for
    networks without BatchNorm). The head gets the list of all stage outputs.
    """

    def __init__(self, stem: nn.Module, stages: Sequence[nn.Module], widths: Sequence[int], num_classes: int,
                 in_chans: int, head: HeadFactory = linear_head, patch: str | None = None, tap: int = 1,
                 patch_norm: bool = False) -> None:
        super().__init__()
        if patch not in PATCH_MODES:
            raise ValueError(f"patch must be one of {PATCH_MODES}, got {patch!r}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.default_input_size = (in_chans, 32, 32)
        self.has_patch_logits = patch is not None
        self.patch_logits_in_inference = patch == "cls"
        self.arch_name = type(self).__name__.lower()  # create() overwrites both with the registered name
        self.arch_kwargs = {"num_classes": num_classes, "in_chans": in_chans}
        self.tap = tap
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.patch_head = nn.Conv2d(widths[tap], num_classes, 1) if patch == "aux" else None
        self.class_block = ClassSemanticBlock(widths[tap], num_classes, input_norm=patch_norm) if patch == "cls" else None
        self.head = head(widths, num_classes)

    def _run(self, x: Tensor, want_patch_logits: bool) -> tuple[Tensor, Tensor | None]:
        x = self.stem(x)
        features, patch_logits = [], None
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i == self.tap and self.class_block is not None:
                if want_patch_logits:
                    x, patch_logits = self.class_block.forward_with_patch_logits(x)
                else:
                    x = self.class_block(x)
            elif i == self.tap and self.patch_head is not None and want_patch_logits:
                patch_logits = self.patch_head(x)
            features.append(x)
        return self.head(features), patch_logits

    def forward(self, x: Tensor) -> Tensor:
        return self._run(x, want_patch_logits=False)[0]

    def forward_with_patch_logits(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(logits, patch_logits)``; patch logits are N×num_classes×h×w, or ``None`` without a patch head."""
        return self._run(x, want_patch_logits=self.has_patch_logits)


def register_patch_variants(name: str, build: Callable[..., StagedNet]) -> None:
    """Register ``name``, ``name-aux`` and ``name-cls``, built by ``build(num_classes, in_chans, patch=...)``."""

    def variant(patch: str | None) -> Callable[..., StagedNet]:
        def factory(num_classes: int = 10, in_chans: int = 3) -> StagedNet:
            return build(num_classes, in_chans, patch=patch)

        factory.__doc__ = f"{name} with patch head {patch!r}"
        return factory

    for patch in PATCH_MODES:
        register_model(name + (f"-{patch}" if patch else ""))(variant(patch))


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


register_patch_variants("rn26", partial(_resnet, 26))
register_patch_variants("rn38", partial(_resnet, 38))


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
