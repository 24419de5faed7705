"""The model card: what a deployed model must know about itself besides its weights, and its checks.

Every exported file describes itself from the card (input size, class names, mean/std), so a card is
checked as the graph will hold it, whichever way it was made: read from a tmdeploy checkpoint, given on the
command line for a bare state_dict or a ``.pt2`` program, or passed to :func:`tmdeploy.from_module`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from tmdeploy.errors import TmdeployError, UsageError, first_line
from tmdeploy.values import MAX_CLASSES, input_size_problem, normalization_problem, plain_list


@dataclass
class ModelCard:
    """What a deployed model must know about itself besides its weights."""

    arch: str  # a registered name, the --arch spec of the user's code, or the module's class for from_module
    arch_kwargs: dict
    class_names: list[str]
    input_size: tuple[int, int, int]  # C, H, W
    mean: list[float]
    std: list[float]
    extra: dict = field(default_factory=dict)  # training record: epochs, accuracy, seed, data

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def training_data(self) -> str | None:
        """The data spec the model was trained on, as ``tmdeploy train`` recorded it; None if unknown."""
        train = self.extra.get("train")
        spec = train.get("data") if isinstance(train, dict) else None
        return spec if isinstance(spec, str) else None


def card_for(model: nn.Module, class_names, mean, std, input_size=None, extra=None) -> ModelCard:
    """The card of a model built by :func:`tmdeploy.models.create`."""
    size = tuple(input_size) if input_size is not None else tuple(model.default_input_size)
    return ModelCard(
        arch=model.arch_name,
        arch_kwargs=dict(model.arch_kwargs),
        class_names=[str(c) for c in class_names],
        input_size=tuple(int(s) for s in size),
        mean=[float(m) for m in mean],
        std=[float(s) for s in std],
        extra=dict(extra or {}),
    )


def card_from_dict(meta: dict, where: str) -> ModelCard:
    """The card in a checkpoint's metadata, checked; ``where`` (the file) prefixes every error."""
    if not isinstance(meta, dict):
        raise TmdeployError(f"{where}: checkpoint metadata is not a mapping")
    try:
        for key in ("class_names", "input_size", "mean", "std"):
            if not isinstance(meta[key], (list, tuple)):
                raise TypeError(f"{key} is a {type(meta[key]).__name__}, not a list")
        if not plain_list(meta["class_names"], (str, int)):
            raise TypeError("class_names must be strings")
        if not plain_list(meta["input_size"], int):
            raise TypeError(f"input_size must be integers, got {meta['input_size']!r:.100}")
        if not (plain_list(meta["mean"], (int, float)) and plain_list(meta["std"], (int, float))):
            raise TypeError("mean and std must be numbers")
        card = ModelCard(
            arch=str(meta["arch"]),
            arch_kwargs=dict(meta.get("arch_kwargs") or {}),
            class_names=[str(c) for c in meta["class_names"]],
            input_size=tuple(int(s) for s in meta["input_size"]),
            mean=[float(m) for m in meta["mean"]],
            std=[float(s) for s in meta["std"]],
            extra=dict(meta.get("extra") or {}),
        )
        if not all(isinstance(k, str) and (v is None or isinstance(v, (bool, int, float, str)))
                   for k, v in card.arch_kwargs.items()):
            raise TypeError("arch_kwargs must map option names to plain values")
    except (KeyError, TypeError, ValueError, ArithmeticError) as err:  # ArithmeticError: int(inf), float(10**400)
        raise TmdeployError(f"{where}: checkpoint metadata is incomplete or malformed "
                            f"({type(err).__name__}: {first_line(err, 160)})") from err
    problem = card_problem(card)
    if problem:
        raise TmdeployError(f"{where}: {problem}")
    for option, value in (("num_classes", card.num_classes), ("in_chans", card.input_size[0])):
        declared = card.arch_kwargs.get(option, value)
        if declared != value:
            raise TmdeployError(f"{where}: checkpoint metadata implies {option}={value}, but its architecture "
                                f"options say {option}={declared!r:.50}")
    return card


def card_problem(card: ModelCard) -> str | None:
    """Why ``card`` cannot describe a deployed model (sizes, mean/std as float32 holds them, classes), or None."""
    if len(card.input_size) != 3 or min(card.input_size) < 1:
        return f"input_size must be three positive integers (C, H, W), got {card.input_size}"
    problem = input_size_problem(card.input_size)
    if problem:
        return problem
    channels = card.input_size[0]
    if len(card.mean) != channels or len(card.std) != channels:
        return f"mean/std must have one value per input channel ({channels})"
    problem = normalization_problem(card.mean, card.std)  # as the float32 graph holds them, not as stored
    if problem:
        return problem
    if not card.class_names:
        return "checkpoint has no class names"
    if len(card.class_names) > MAX_CLASSES:
        return f"{len(card.class_names)} classes is more than tmdeploy takes ({MAX_CLASSES})"
    return None


def check_card(card: ModelCard) -> ModelCard:
    """``card`` if it can describe a deployed model; a UsageError naming the problem (it came from the caller)."""
    problem = card_problem(card)
    if problem:
        raise UsageError(problem)
    return card
