"""Checkpoints round-trip and load safely; training on digits really learns."""

import json

import numpy as np
import pytest
import torch

from tmdeploy import checkpoint, models
from tmdeploy.errors import TmdeployError, UsageError
from tmdeploy.train import TrainConfig, train


def _card(model):
    return checkpoint.card_for(model, [f"c{i}" for i in range(10)], [0.25], [0.5])


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_round_trip_keeps_weights_and_card(tmp_path, suffix):
    torch.manual_seed(0)
    model = models.create("rn26-cls", num_classes=10, in_chans=1).eval()
    path = checkpoint.save(tmp_path / f"m{suffix}", model, _card(model))
    loaded = checkpoint.load(path)
    assert loaded.card.arch == "rn26-cls"
    assert loaded.card.class_names == [f"c{i}" for i in range(10)]
    assert loaded.card.input_size == (1, 32, 32)
    assert loaded.card.mean == [0.25] and loaded.card.std == [0.5]
    rebuilt = loaded.build_model()
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    assert len(loaded.sha256) == 64


def test_every_written_checkpoint_opens_with_weights_only(tmp_path):
    model = models.create("rn26-tm", num_classes=10, in_chans=1)
    path = checkpoint.save(tmp_path / "m.pt", model, _card(model))
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == checkpoint.FORMAT and payload["arch"] == "rn26-tm"
    assert set(payload["state_dict"]) == set(model.state_dict())


def test_bare_state_dict_needs_arch(tmp_path):
    model = models.create("rn26", num_classes=7, in_chans=3)
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(UsageError, match="--arch"):
        checkpoint.load(tmp_path / "bare.pt")
    loaded = checkpoint.load(tmp_path / "bare.pt", arch="rn26")
    assert loaded.card.num_classes == 7 and loaded.card.input_size[0] == 3
    # without a card, input size and normalisation come from the architecture's registered default config
    assert loaded.card.input_size == model.default_input_size == (3, 32, 32) and loaded.card.mean == [0.5] * 3
    loaded.build_model()


def test_shape_mismatch_names_the_tensor(tmp_path):
    model = models.create("rn26", num_classes=10, in_chans=3)
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    ckpt = checkpoint.load(tmp_path / "bare.pt", arch="rn26", num_classes=5)
    with pytest.raises(TmdeployError, match=r"tensor 'head\.fc\.weight' has shape \(10, 256\)"):
        ckpt.build_model()


def test_nan_weights_are_refused_with_their_name():
    model = models.create("rn26-tm", num_classes=10, in_chans=1)
    state = model.state_dict()
    state["stages.0.0.tm.values.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(TmdeployError, match=r"stages\.0\.0\.tm\.values\.weight"):
        checkpoint.check_finite(state)


def test_label_smoothing_is_a_recipe_option_checked_before_training():
    from tmdeploy.cli import build_parser
    from tmdeploy.cli.train_cmd import options

    assert options(build_parser().parse_args(["train"])).label_smoothing == TrainConfig().label_smoothing
    assert options(build_parser().parse_args(["train", "--label-smoothing", "0.2"])).label_smoothing == 0.2
    for bad in (-0.1, 1.0):
        with pytest.raises(UsageError, match="--label-smoothing"):
            TrainConfig(label_smoothing=bad).validate()


@pytest.mark.slow
def test_default_recipe_on_digits_reaches_97_percent(trained):
    ckpt, result = trained("rn26-cls")
    assert result.accuracy >= 0.97, result.history  # measured 99.17 % at 1 and 2 threads (benchmarks/train_all.py)
    assert [h["epoch"] for h in result.history] == list(range(1, TrainConfig().epochs + 1))
    assert ckpt.card.extra["train"]["seed"] == 0
    assert ckpt.card.input_size == (1, 16, 16)  # digits' default size
    assert json.loads(json.dumps(ckpt.card.extra))  # the training record is plain data


@pytest.mark.slow
def test_statistics_free_network_trains_as_well_as_its_batchnorm_twin(trained):
    """The seed's claim, on real data: rn26-tm (no batch statistics anywhere) about as good as rn26.

    Measured here: 98.89 % both. The bound is 2 points, not the 1 the benchmark reports, because a
    template-matching network's accuracy for one seed moved by up to 1.1 points with the CPU's kernels
    (1 vs 2 threads, before label smoothing; 0.28 points after): a 1-point bound could pass or fail by machine.
    """
    tm, bn = trained("rn26-tm")[1], trained("rn26")[1]
    assert tm.accuracy >= 0.97, tm.history
    assert tm.accuracy >= bn.accuracy - 0.02, (tm.history, bn.history)


@pytest.mark.slow
def test_same_seed_lands_within_a_point_at_another_thread_count(trained):
    """Other thread counts run other kernels and reduction orders (as other CPUs do); the recipe must not care.

    Measured here for rn26-cls: 99.17 % at 1 thread and at 2. The bound is three
    images, because the same seed's runs diverge after the first epochs on any CPU and the test must hold
    on every machine; both runs must also clear the 97 % floor.
    """
    reference = trained("rn26-cls")[1]
    threads = torch.get_num_threads()
    other = 1 if threads > 1 else 2
    torch.set_num_threads(other)
    try:
        result = train(TrainConfig(arch="rn26-cls"), show_progress=False)
    finally:
        torch.set_num_threads(threads)
    assert result.accuracy >= 0.97, result.history
    assert abs(result.accuracy - reference.accuracy) <= 0.01, (threads, reference.history, other, result.history)


def test_local_data_sources_read_real_files_and_explain_what_is_missing(tmp_path):
    from PIL import Image

    from tmdeploy import data

    with pytest.raises(TmdeployError, match="does not hold the CIFAR10 data set"):
        data.load(f"cifar10:{tmp_path}")
    with pytest.raises(UsageError, match="unknown data source"):
        data.load("imagenet")
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(5):
            pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / label / f"{i}.png")
    split = data.load(f"folder:{tmp_path / 'imgs'}", image_size=16)
    assert split.class_names == ["cat", "dog"] and split.in_chans == 3
    assert len(split.train) + len(split.test) == 10
    image, label = split.train[0]
    assert image.shape == (3, 16, 16) and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert len(split.mean) == 3 and all(s > 0 for s in split.std)
