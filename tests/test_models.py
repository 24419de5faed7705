"""Model zoo: blocks against slow independent references, batch independence, loss, registry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from tmdeploy.errors import UsageError
from tmdeploy.models import auxiliary_loss, count_parameters, create, list_models
from tmdeploy.models.layers import (
    ClassSemanticBlock,
    ConvMixHead,
    ResponseCalibration,
    SpatialGroupEnhance,
    TemplateMatching,
    TMBlock,
)

REQUIRED = ["rn26", "rn26-aux", "rn26-cls", "rn26-tm", "rn26-tm-cls", "rn26-sge", "rn26-rescnet", "rn26-convmix",
            "rn38", "rn38-cls", "wrn16", "wrn16-cls", "dn100", "dn100-cls"]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _randomize(module: nn.Module, seed: int = 0) -> None:
    """Move every parameter off its init (μ = 0, τ = 1, γ = 0, ...) so the references test the full formula."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


# --- template matching: per-patch loop reference -------------------------------------------------

def _tm_reference(x, templates, bias, values, mu, tau, stride, pad):
    """Per output pixel: cut the k×k patch, score it against each template, soft-max with the null option."""
    n, c, h, w = x.shape
    k_templates, _, ks, _ = templates.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - ks) // stride + 1, (w + 2 * pad - ks) // stride + 1
    scores = np.zeros((n, k_templates, ho, wo))
    out = np.zeros((n, values.shape[0], ho, wo))
    for b in range(n):
        for i in range(ho):
            for j in range(wo):
                patch = xp[b, :, i * stride:i * stride + ks, j * stride:j * stride + ks]
                s = np.array([(templates[k] * patch).sum() + bias[k] for k in range(k_templates)])
                e = np.exp(np.append(s, mu) / tau - max(s.max(), mu) / tau)
                p = e[:k_templates] / e.sum()
                scores[b, :, i, j] = s
                out[b, :, i, j] = values @ p
    return scores, out


def _tm_params(tm: TemplateMatching):
    return (_np(tm.templates.weight), _np(tm.templates.bias), _np(tm.values.weight)[:, :, 0, 0],
            tm.null_logit.item(), tm.temperature.item())


def _pixel_rms(x: np.ndarray) -> np.ndarray:
    return x / np.sqrt((x ** 2).mean(1, keepdims=True) + 1e-6)


@pytest.mark.parametrize("in_ch,out_ch,stride,width,input_norm",
                         [(4, 4, 1, None, False), (3, 5, 2, None, False), (4, 4, 1, 3, True), (3, 5, 2, 2, True),
                          (4, 4, 1, None, True)])
def test_tm_block_matches_patch_loop(in_ch, out_ch, stride, width, input_norm):
    torch.manual_seed(0)
    block = TMBlock(in_ch, out_ch, stride=stride, num_templates=6, width=width, input_norm=input_norm)
    _randomize(block)
    x = torch.randn(2, in_ch, 5, 6)
    h = _np(x)
    if width:  # the 1×1 reduce, then the per-pixel RMS normalisation over channels
        h = np.einsum("oc,nchw->nohw", _np(block.reduce.weight)[:, :, 0, 0], h)
    if input_norm:
        h = _pixel_rms(h)
    _, expected = _tm_reference(h, *_tm_params(block.tm), stride=stride, pad=1)
    if isinstance(block.shortcut, nn.Identity):
        expected += _np(x)
    else:
        w, b = _np(block.shortcut.weight)[:, :, 0, 0], _np(block.shortcut.bias)
        expected += np.einsum("oc,nchw->nohw", w, _np(x)[:, :, ::stride, ::stride]) + b[:, None, None]
    np.testing.assert_allclose(_np(block(x)), expected, rtol=1e-5, atol=1e-5)


def test_tm_defaults_and_temperature():
    tm = TemplateMatching(3, 5, 7)
    assert tm.null_logit.shape == () and tm.log_temperature.shape == ()
    assert tm.null_logit.item() == 0 and tm.temperature.item() == 1
    assert tm.templates.kernel_size == (3, 3) and tm.templates.bias is not None and tm.values.bias is None
    x = torch.randn(2, 3, 4, 4)
    s, p = tm.match(x)
    assert s.shape == p.shape == (2, 7, 4, 4)
    out, scores = tm.forward_with_scores(x)
    assert torch.equal(out, tm(x)) and torch.equal(scores, s)
    assert bool(((p.sum(1) > 0) & (p.sum(1) < 1)).all())  # the null option takes the rest
    assert TMBlock(8, 8).tm.num_templates == 8 and isinstance(TMBlock(8, 8).shortcut, nn.Identity)
    assert TMBlock(8, 8, width=2).tm.num_templates == 2 and TMBlock(8, 8, width=2).tm.templates.in_channels == 2


def test_class_semantic_block_matches_patch_loop():
    torch.manual_seed(0)
    block = ClassSemanticBlock(6, num_classes=4)
    _randomize(block, seed=1)
    x = torch.randn(2, 6, 3, 4)
    scores, mixed = _tm_reference(_np(x), *_tm_params(block.tm), stride=1, pad=0)
    out, patch_logits = block.forward_with_patch_logits(x)
    np.testing.assert_allclose(_np(patch_logits), scores, rtol=1e-5, atol=1e-6)  # S is un-tempered
    np.testing.assert_allclose(_np(out), _np(x) + mixed, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_np(block(x)), _np(out), rtol=0, atol=0)


def test_gradient_reaches_null_logit_and_temperature():
    torch.manual_seed(0)
    tm = TemplateMatching(3, 4, 5)
    with torch.no_grad():
        tm.null_logit.fill_(0.5)  # away from 0 so the τ gradient is not accidentally tiny
    (tm(torch.randn(2, 3, 6, 6)) ** 2).sum().backward()
    for p in (tm.null_logit, tm.log_temperature):
        assert p.grad is not None and p.grad.abs().item() > 1e-6


# --- SGE, ResCNet, ConvMix ----------------------------------------------------------------------

def test_sge_matches_group_loop():
    torch.manual_seed(0)
    sge = SpatialGroupEnhance(12, groups=3)
    _randomize(sge)
    x = torch.randn(2, 12, 5, 4)
    xs, gamma, beta = _np(x), _np(sge.weight).ravel(), _np(sge.bias).ravel()
    expected = np.empty_like(xs)
    for n in range(2):
        for g in range(3):
            xg = xs[n, 4 * g:4 * g + 4]
            sim = np.einsum("c,chw->hw", xg.mean(axis=(1, 2)), xg)
            t = (sim - sim.mean()) / (sim.std(ddof=1) + 1e-5)
            expected[n, 4 * g:4 * g + 4] = xg / (1 + np.exp(-(gamma[g] * t + beta[g])))
    np.testing.assert_allclose(_np(sge(x)), expected, rtol=1e-5, atol=1e-6)


def test_sge_rejects_bad_shapes():
    with pytest.raises(ValueError, match="larger than 1x1"):
        SpatialGroupEnhance(8, groups=4)(torch.randn(2, 8, 1, 1))
    with pytest.raises(ValueError):
        SpatialGroupEnhance(10, groups=4)


def test_rescnet_matches_elementwise_loop():
    torch.manual_seed(0)
    cal = ResponseCalibration(8, reduction=4)
    _randomize(cal)
    y = torch.randn(2, 8, 3, 3)
    ys = _np(y)
    w1, b1 = _np(cal.squeeze.weight), _np(cal.squeeze.bias)
    w21, b21 = _np(cal.mean.weight), _np(cal.mean.bias)
    w22, b22 = _np(cal.logvar.weight), _np(cal.logvar.bias)
    expected = np.empty_like(ys)
    for n in range(2):
        h = w1 @ ys[n].mean(axis=(1, 2)) + b1
        mu, logvar = w21 @ h + b21, w22 @ h + b22
        for c in range(8):
            for (i, j), v in np.ndenumerate(ys[n, c]):
                z = (v - mu[c]) / (math.exp(0.5 * logvar[c]) + 1e-5)
                expected[n, c, i, j] = v * (1 + 0.5 * math.erfc(abs(z) / math.sqrt(2)))
    np.testing.assert_allclose(_np(cal(y)), expected, rtol=1e-5, atol=1e-6)


def test_convmix_matches_stage_loop():
    torch.manual_seed(0)
    head = ConvMixHead([4, 6, 8], num_classes=3, width=5)
    _randomize(head)
    feats = [torch.randn(2, c, s, s) for c, s in ((4, 8), (6, 4), (8, 2))]
    a = _np(head.stage_logits)
    alpha = np.exp(a) / np.exp(a).sum()
    mixed = np.zeros((2, 5))
    for s, (proj, f) in enumerate(zip(head.projections, feats)):
        mixed += alpha[s] * (_np(f).mean(axis=(2, 3)) @ _np(proj.weight).T + _np(proj.bias))
    expected = mixed @ _np(head.fc.weight).T + _np(head.fc.bias)
    np.testing.assert_allclose(_np(head(feats)), expected, rtol=1e-5, atol=1e-6)


# --- batch statistics ---------------------------------------------------------------------------

def _alone_vs_in_batch(model: nn.Module, train: bool) -> float:
    batch = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model.train(train)
    with torch.no_grad():
        return (model(batch)[5] - model(batch[5:6])[0]).abs().max().item()


@pytest.mark.parametrize("arch", ["rn26-tm", "rn26-tm-cls"])
def test_tm_net_is_batch_independent_bn_net_is_not(arch):
    torch.manual_seed(0)
    tm_net = create(arch)
    assert _alone_vs_in_batch(tm_net, train=True) < 1e-5
    assert _alone_vs_in_batch(tm_net, train=False) < 1e-5
    bn_net = create("rn26")
    diff = _alone_vs_in_batch(bn_net, train=True)
    assert diff > 1e-2, f"BN baseline in train mode should depend on the batch, max |Δlogit| = {diff:.3g}"


@pytest.mark.parametrize("arch", ["rn26-tm", "rn26-tm-cls"])
def test_tm_net_has_no_batch_norm(arch):
    model = create(arch)
    assert not any(isinstance(m, nn.modules.batchnorm._NormBase) for m in model.modules())
    assert not any("running" in name for name, _ in model.named_buffers())


# --- auxiliary loss -----------------------------------------------------------------------------

def test_auxiliary_loss_hand_example():
    logits = [[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]]
    target = [1, 2]
    # patch_logits[n][class][i][j], 2×2 patches
    patches = [
        [[[1.0, 0.0], [0.0, 2.0]], [[0.0, 1.0], [2.0, 0.0]], [[0.0, 0.0], [1.0, 1.0]]],
        [[[0.5, 0.0], [1.0, 0.0]], [[0.0, 0.5], [0.0, 3.0]], [[2.0, 1.0], [0.0, 0.0]]],
    ]
    lam = 0.3

    def ce(v, y):
        return -v[y] + math.log(sum(math.exp(e) for e in v))

    image_ce = (ce(logits[0], 1) + ce(logits[1], 2)) / 2
    patch_ce = sum(ce([patches[n][c][i][j] for c in range(3)], target[n])
                   for n in range(2) for i in range(2) for j in range(2)) / 8
    expected = (1 - lam) * image_ce + lam * patch_ce
    got = auxiliary_loss(torch.tensor(logits), torch.tensor(patches), torch.tensor(target), lam)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    plain = auxiliary_loss(torch.tensor(logits), None, torch.tensor(target), lam)
    assert plain.item() == pytest.approx(image_ce, rel=1e-6)
    with pytest.raises(UsageError):
        auxiliary_loss(torch.tensor(logits), None, torch.tensor(target), 1.5)


def test_auxiliary_loss_smooths_every_cross_entropy_term():
    """ε moves 1−ε of the target onto the label and ε/C onto every class, in the image and the patch terms."""
    logits = torch.tensor([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]])
    patches = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([1, 2])
    eps, lam = 0.1, 0.3

    def smoothed(v, y):  # N×C logits
        log_p = v.log_softmax(1)
        return (-(1 - eps) * log_p[torch.arange(len(y)), y] - eps / 3 * log_p.sum(1)).mean()

    patch_rows = patches.permute(0, 2, 3, 1).reshape(-1, 3)
    expected = (1 - lam) * smoothed(logits, target) + lam * smoothed(patch_rows, target.repeat_interleave(4))
    got = auxiliary_loss(logits, patches, target, lam, label_smoothing=eps)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert auxiliary_loss(logits, None, target, lam, eps).item() == pytest.approx(smoothed(logits, target).item())


# --- registry and every architecture ------------------------------------------------------------

def test_registry_lists_required_names_and_rejects_unknown():
    assert set(REQUIRED) <= set(list_models())
    with pytest.raises(UsageError, match="unknown architecture 'x'; choose one of: .*rn26-tm"):
        create("x")
    with pytest.raises(UsageError, match="bad options"):
        create("rn26", depth=50)
    with pytest.raises(UsageError):
        create("rn26", num_classes=0)


@pytest.mark.parametrize("name", list_models())
def test_every_model_forward_and_attributes(name):
    torch.manual_seed(0)
    model = create(name, num_classes=10, in_chans=3).eval()
    x = torch.randn(2, 3, 32, 32)
    calls = []
    if getattr(model, "patch_head", None) is not None:
        model.patch_head.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        logits = model(x)
        assert not calls, "forward() must not run the training-only patch head"
        logits2, patch_logits = model.forward_with_patch_logits(x)
    assert logits.shape == (2, 10)
    torch.testing.assert_close(logits2, logits)
    assert model.has_patch_logits == name.endswith(("-aux", "-cls"))
    assert model.patch_logits_in_inference == name.endswith("-cls")
    if model.has_patch_logits:
        assert patch_logits.shape[:2] == (2, 10) and patch_logits.shape[2:] == (16, 16)
    else:
        assert patch_logits is None
    assert model.default_input_size == (3, 32, 32)
    assert model.arch_name == name and model.arch_kwargs == {"num_classes": 10, "in_chans": 3}
    rebuilt = create(model.arch_name, **model.arch_kwargs)
    rebuilt.load_state_dict(model.state_dict())
    # one input channel, at the smallest supported and at an odd, non-square size (GAP makes any H, W ≥ 8 work)
    gray = create(name, num_classes=4, in_chans=1).eval()
    with torch.no_grad():
        assert gray(torch.randn(1, 1, 8, 8)).shape == (1, 4)
        assert gray(torch.randn(1, 1, 13, 9)).shape == (1, 4)
    assert gray.default_input_size == (1, 32, 32)


# Seed table (docs/models.md, "Architectures"): base + per-class terms. The table gives -aux / -Ours increments for RN26 only
# (+129C, +130C more); for RN38 / WRN16 / DN100 the same increments are assumed.
SEED_COUNTS = {
    "rn26": (0.96e6, 257), "rn26-aux": (0.96e6, 386), "rn26-cls": (0.96e6, 516),
    "rn38": (1.42e6, 257), "rn38-aux": (1.42e6, 386), "rn38-cls": (1.42e6, 516),
    "wrn16": (1.28e6, 129), "wrn16-aux": (1.28e6, 258), "wrn16-cls": (1.28e6, 388),
    "dn100": (1.20e6, 535), "dn100-aux": (1.20e6, 664), "dn100-cls": (1.20e6, 794),
}


@pytest.mark.parametrize("num_classes", [10, 100])
def test_parameter_counts_match_seed_table(num_classes):
    for name, (base, per_class) in SEED_COUNTS.items():
        if name not in list_models():
            continue
        expected = base + per_class * num_classes
        got = count_parameters(create(name, num_classes=num_classes))
        assert abs(got / expected - 1) < 0.10, f"{name}: {got} vs seed {expected:.0f}"


def test_variant_parameter_counts_are_what_the_blocks_add():
    """SGE, ResCNet and ConvMix add exactly their own parameters to RN26; rn26-tm is counted block by block."""
    c = 10
    base = count_parameters(create("rn26", num_classes=c))
    branch_widths = [64] * 2 + [128] * 2 + [256] * 4  # output width of each of the 8 blocks
    assert count_parameters(create("rn26-sge", num_classes=c)) == base + 8 * 2 * 8
    rescnet = sum(w * (w // 4) + w // 4 + 2 * ((w // 4) * w + w) for w in branch_widths)
    assert count_parameters(create("rn26-rescnet", num_classes=c)) == base + rescnet
    convmix = sum(w * 256 + 256 for w in (64, 128, 256)) + 3
    assert count_parameters(create("rn26-convmix", num_classes=c)) == base + convmix

    def tm_block(cin, cout, width, k, reduce=True):  # 1×1 reduce, ω, b, ν, μ, τ, and a biased 1×1 shortcut
        return cin * width * reduce + 9 * width * k + k + k * cout + 2 + (cin * cout + cout if cin != cout else 0)

    ins = [32, 64, 64, 128, 128, 256, 256, 256]
    inner = [16] * 2 + [48] * 2 + [128] * 4  # rn26's bottleneck widths: the templates' input width and K
    tm = 9 * 3 * 32 + 32 + sum(tm_block(i, o, w, w) for i, o, w in zip(ins, branch_widths, inner)) + 256 * c + c
    assert count_parameters(create("rn26-tm", num_classes=c)) == tm
    assert abs(tm / base - 1) < 0.01  # the point of matching K to the bottleneck: rn26's size and cost
    legacy = 9 * 3 * 32 + 32 + sum(tm_block(i, o, i, o, reduce=False) for i, o in zip(ins, branch_widths)) + 256 * c + c
    assert count_parameters(create("rn26-tm", num_classes=c, legacy=True)) == legacy
    slim = create("rn26-tm", num_classes=c, template_ratio=0.5)
    assert [m.tm.num_templates for m in slim.modules() if isinstance(m, TMBlock)] == [w // 2 for w in inner]
