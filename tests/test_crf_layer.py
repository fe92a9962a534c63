"""CRFLayer: equal to the inference engine, gradients by gradcheck against the exact dense
reference, lattice vs dense gradients, the std-gradient identity, checkpointing, memory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import requires_cuda
from torch.func import functional_call

from deeplabv1.crf import PairwiseTerm, bilateral_features, deeplab_crf, gaussian_features
from deeplabv1.crf.params import CRFParams
from deeplabv1.crf.torch.dense import DenseFilter
from deeplabv1.crf.torch.layer import CRFLayer
from deeplabv1.crf.torch.learned import LearnedCRFParams, crf_params_from_checkpoint
from deeplabv1.crf.torch.meanfield import mean_field
from deeplabv1.crf.torch.scaled_filter import ExactLinearFilter, ScaledFilter

# Small stds so that tiny images have kernels that are neither ~0 nor ~1 everywhere.
SMALL = CRFParams(w1=4, sa=15, sb=20, w2=3, sg=2)


def scene(h: int, w: int, num_classes: int = 3, seed: int = 0, dtype=torch.float64):
    """Three coloured regions with noise, smooth noisy scores (as upsampled fc8), labels."""
    g = torch.Generator().manual_seed(seed)
    lab = torch.zeros(h, w, dtype=torch.long)
    lab[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 1
    lab[:, : max(1, w // 6)] = 2 % num_classes
    colours = torch.tensor([[200, 30, 30], [20, 40, 220], [30, 200, 40]], dtype=torch.float32)
    img = colours[lab][None] + 25 * torch.randn(1, h, w, 3, generator=g)
    img = img.clamp(0, 255).to(torch.uint8)
    coarse = F.one_hot(lab[::4, ::4], num_classes).permute(2, 0, 1)[None].to(dtype) * 2
    coarse = coarse + 1.5 * torch.randn(coarse.shape, generator=g, dtype=dtype)
    scores = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)
    return scores, img, lab[None]


def learned(num_classes: int, seed: int = 0) -> LearnedCRFParams:
    g = torch.Generator().manual_seed(seed)
    mu = 1 - torch.eye(num_classes) + 0.3 * torch.randn(num_classes, num_classes, generator=g)
    mu = 0.5 * (mu + mu.T)
    return LearnedCRFParams(**SMALL.to_dict(), compat=tuple(map(tuple, mu.tolist())))


@pytest.mark.parametrize("method", ["lattice", "dense"])
def test_fresh_layer_equals_deeplab_crf(method):
    scores, img, _ = scene(20, 24, dtype=torch.float32)
    layer = CRFLayer(3, "deeplab-largefov", iters=10, method=method)
    with torch.no_grad():
        q = layer(scores, img).softmax(1)
    ref = deeplab_crf(scores, img, "deeplab-largefov", iters=10, method=method)
    assert q.shape == ref.shape == (1, 3, 20, 24)
    torch.testing.assert_close(q, ref, atol=5e-4, rtol=0)  # float32 rounding over 10 updates
    assert float((q.argmax(1) == ref.argmax(1)).float().mean()) == 1.0


def test_learned_compat_equals_engine_matrix_terms():
    """A learned (non-Potts) CRF is the engine's CRF with matrix compatibilities w_k * mu."""
    scores, img, _ = scene(16, 20, dtype=torch.float32)
    params = learned(3)
    layer = CRFLayer(3, params, iters=10, method="dense")
    with torch.no_grad():
        q = layer(scores, img).softmax(1)
    c1, c2 = params.term_compats()
    terms = [
        PairwiseTerm(bilateral_features(img, params.sa, params.sb), c1, "after"),
        PairwiseTerm(gaussian_features(16, 20, params.sg), c2, "after"),
    ]
    ref = mean_field(-scores.flatten(2), terms, iters=10, method="dense").reshape(q.shape)
    torch.testing.assert_close(q, ref, atol=2e-5, rtol=0)


def test_zero_iterations_return_the_scores():
    scores, img, _ = scene(8, 8)
    assert torch.equal(CRFLayer(3, SMALL).double()(scores, img, iters=0), scores)


def _functional(layer, img, names):
    def f(scores, *params):
        return functional_call(layer, dict(zip(names, params)), (scores, img))

    return f


def _params(layer, names):
    return tuple(getattr(layer, n).detach().clone().requires_grad_() for n in names)


def test_gradcheck_dense_all_parameters():
    """Exact dense reference: unary, weights, compat and the log stds, float64."""
    scores, img, _ = scene(5, 4)
    layer = CRFLayer(3, SMALL, iters=3, method="dense", learn_std=True).double()
    names = ("weights", "compat", "log_std")
    args = (scores.clone().requires_grad_(), *_params(layer, names))
    assert torch.autograd.gradcheck(_functional(layer, img, names), args, fast_mode=True)


def test_gradcheck_lattice_linear_parameters():
    """The lattice layer's analytic gradients (adjoint filtering) are exact for its operator."""
    scores, img, _ = scene(5, 4)
    layer = CRFLayer(3, learned(3), iters=3, method="lattice").double()
    names = ("weights", "compat")
    args = (scores.clone().requires_grad_(), *_params(layer, names))
    assert torch.autograd.gradcheck(_functional(layer, img, names), args, fast_mode=True)


def test_std_gradient_identity_is_exact_with_the_exact_kernel():
    """The expansion of scaled_filter.py equals autograd through the dense filter."""
    g = torch.Generator().manual_seed(3)
    raw = torch.randn(2, 30, 3, generator=g, dtype=torch.float64) * 4 + 10
    values = torch.randn(2, 30, 4, generator=g, dtype=torch.float64)
    weight = torch.randn(2, 30, 4, generator=g, dtype=torch.float64)
    scale = torch.tensor([0.3, 0.5, 0.2], dtype=torch.float64, requires_grad=True)
    (ref,) = torch.autograd.grad((DenseFilter(raw * scale).apply(values) * weight).sum(), scale)
    scaled = ScaledFilter(raw, scale, ExactLinearFilter(raw * scale))
    (got,) = torch.autograd.grad((scaled.apply(values) * weight).sum(), scale)
    torch.testing.assert_close(got, ref, atol=1e-10, rtol=1e-10)


def _grads(method: str, scores, img, labels, learn_std=True, checkpoint=False, iters=5):
    layer = CRFLayer(3, SMALL, iters=iters, method=method, learn_std=learn_std,
                     checkpoint=checkpoint).to(scores.dtype)  # fmt: skip
    s = scores.detach().clone().requires_grad_()
    F.cross_entropy(layer(s, img), labels).backward()
    out = {"scores": s.grad, "weights": layer.weights.grad, "compat": layer.compat.grad}
    if learn_std:
        out["log_std"] = layer.log_std.grad
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_lattice_gradients_agree_with_dense(seed):
    """Gradients of a linear functional of Q (3 updates, sa 10, sb 20, sg 3, 24x28) through
    the lattice vs the exact dense layer. Measured relative errors: scores 0.09 / 0.17,
    weights 0.04 / 0.13, compat 0.01 / 0.13, log stds 0.12 / 0.34 (the documented
    approximation), cosine similarity >= 0.986; the forward Q itself differs by 2.2 / 2.5 %
    (the lattice's approximation of the Gaussian on a tiny image bounds the agreement)."""
    scores, img, _ = scene(24, 28, seed=seed)
    weight = torch.randn(scores.shape, generator=torch.Generator().manual_seed(seed),
                         dtype=torch.float64)  # fmt: skip
    grads = {}
    for method in ("dense", "lattice"):
        layer = CRFLayer(3, CRFParams(4, 10, 20, 3, 3), iters=3, method=method,
                         learn_std=True).double()  # fmt: skip
        s = scores.clone().requires_grad_()
        (layer(s, img).softmax(1) * weight).sum().backward()
        grads[method] = [s.grad, layer.weights.grad, layer.compat.grad, layer.log_std.grad]
    for name, a, b, tol in zip(("scores", "weights", "compat", "log_std"), grads["dense"],
                               grads["lattice"], (0.25, 0.2, 0.2, 0.45)):  # fmt: skip
        a, b = a.flatten(), b.flatten()
        rel = float((a - b).norm() / a.norm())
        assert rel < tol, (name, rel)
        assert float(F.cosine_similarity(a, b, dim=0)) > 0.97, name


@pytest.mark.parametrize("method", ["lattice", "dense"])
def test_checkpointing_gives_identical_gradients(method):
    scores, img, labels = scene(12, 10, seed=1)
    plain = _grads(method, scores, img, labels, learn_std=method == "dense")
    ckpt = _grads(method, scores, img, labels, learn_std=method == "dense", checkpoint=True)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], atol=1e-12, rtol=1e-12)


def _saved_bytes(iters: int, checkpoint: bool) -> int:
    """Bytes autograd keeps for backward (saved tensors), counted by saved-tensor hooks."""
    scores, img, _ = scene(16, 16, dtype=torch.float32)
    layer = CRFLayer(3, SMALL, iters=iters, checkpoint=checkpoint)
    s = scores.clone().requires_grad_()
    seen: dict[int, int] = {}

    def pack(t):
        seen[id(t)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(s, img)
    out.sum().backward()
    return sum(seen.values())


def test_memory_grows_linearly_and_checkpointing_saves_it():
    """Each unrolled update keeps 3 (B, N, L) tensors (softmax output, two normalised
    messages); checkpointed, only its input Q."""
    per_q = 1 * 16 * 16 * 3 * 4  # float32 bytes of one (B, N, L) tensor
    b2, b4, b8 = (_saved_bytes(n, False) for n in (2, 4, 8))
    assert b4 - b2 == 2 * 3 * per_q and b8 - b4 == 4 * 3 * per_q
    c2, c8 = _saved_bytes(2, True), _saved_bytes(8, True)
    assert c8 - c2 == 6 * per_q


def test_checkpoint_entry_round_trip():
    layer = CRFLayer(3, learned(3), learn_std=True)
    entry = layer.checkpoint_entry()
    assert entry["kind"] == "end-to-end" and entry["iters"] == 10
    assert entry["compat"].shape == (3, 3) and entry["compat"].dtype == torch.float32
    params = crf_params_from_checkpoint(entry)
    assert isinstance(params, LearnedCRFParams) and params.num_classes == 3
    assert params.sa == pytest.approx(SMALL.sa, rel=1e-6)
    again = CRFLayer.from_checkpoint_entry(entry, 3)
    torch.testing.assert_close(again.compat, layer.compat, atol=1e-6, rtol=0)
    plain = crf_params_from_checkpoint({"w1": 4, "sa": 121, "sb": 5, "w2": 3, "sg": 3})
    assert type(plain) is CRFParams
    assert crf_params_from_checkpoint("deeplab") == CRFParams(5, 50, 10, 3, 3)
    with pytest.raises(ValueError, match="ckpt.pt: bad 'crf' entry"):
        crf_params_from_checkpoint({"w1": 4, "compat": torch.zeros(2, 3)}, "ckpt.pt")


def test_bad_inputs_are_rejected():
    scores, img, _ = scene(8, 8)
    layer = CRFLayer(3, SMALL).double()
    with pytest.raises(ValueError, match="scores"):
        layer(scores[:, :2], img)
    with pytest.raises(ValueError, match="images"):
        layer(scores, img[:, :4])
    with pytest.raises(ValueError, match="method"):
        CRFLayer(3, method="fft")
    with pytest.raises(ValueError, match="compat"):
        CRFLayer(4, learned(3))


@requires_cuda
def test_cuda_matches_cpu():
    scores, img, labels = scene(24, 20, dtype=torch.float32)
    cpu = _grads("lattice", scores, img, labels, learn_std=True)
    layer = CRFLayer(3, SMALL, iters=5, learn_std=True).cuda()
    s = scores.cuda().requires_grad_()
    F.cross_entropy(layer(s, img.cuda()), labels.cuda()).backward()
    torch.testing.assert_close(s.grad.cpu(), cpu["scores"], atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(layer.compat.grad.cpu(), cpu["compat"], atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(layer.log_std.grad.cpu(), cpu["log_std"], atol=1e-3, rtol=1e-2)
