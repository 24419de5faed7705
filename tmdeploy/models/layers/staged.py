"""The backbone every architecture here shares: ``stem → stages → head``, with an optional per-patch class head."""

from __future__ import annotations

from typing import Callable, Sequence

from torch import Tensor, nn

from .heads import linear_head
from .template_matching import ClassSemanticBlock

HeadFactory = Callable[[Sequence[int], int], nn.Module]  # (stage widths, num_classes) -> head

PATCH_MODES = (None, "aux", "cls")


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
        self.has_patch_logits = patch is not None
        self.patch_logits_in_inference = patch == "cls"
        self.arch_name = type(self).__name__.lower()  # create() overwrites both with the registered name and options
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
