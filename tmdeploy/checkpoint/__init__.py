"""Checkpoint stage: a model to deploy (:class:`Deployable`), from a checkpoint file, the user's code, a
``torch.export`` program or a module in Python, and the checkpoint files ``tmdeploy train`` writes."""

from tmdeploy.checkpoint.card import ModelCard, card_for
from tmdeploy.checkpoint.deployable import Deployable, as_deployable, from_module, load_model
from tmdeploy.checkpoint.files import FORMAT, SAFETENSORS_METADATA_KEY, SAVE_SUFFIXES, card_to_dict, check_finite, check_save_path, save
from tmdeploy.checkpoint.zoo import Checkpoint, load

__all__ = ["FORMAT", "SAFETENSORS_METADATA_KEY", "SAVE_SUFFIXES", "Checkpoint", "Deployable", "ModelCard",
           "as_deployable", "card_for", "card_to_dict", "check_finite", "check_save_path", "from_module", "load", "load_model", "save"]
