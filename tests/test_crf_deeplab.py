"""DeepLab's CRF convention: parameters by name, deeplab_crf against a numpy reference, and
lattice-versus-exact agreement of full inference on real images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import requires_cuda
from test_crf_meanfield import np_mean_field

from deeplabv1.crf import DEEPLAB_CRF_PARAMS, CRFParams, deeplab_crf, get_params


def test_published_parameters():
    table = {
        "deeplab": (5, 50, 10, 3, 3),
        "deeplab-msc": (3, 95, 3, 3, 3),
        "deeplab-largefov": (4, 121, 5, 3, 3),
        "deeplab-msc-largefov": (4, 83, 5, 3, 3),
    }
    for name, values in table.items():
        p = get_params(name)
        assert (p.w1, p.sa, p.sb, p.w2, p.sg) == values
    # no published values for these two: documented defaults (LargeFOV's)
    assert DEEPLAB_CRF_PARAMS["deeplab-7x7"] == DEEPLAB_CRF_PARAMS["deeplab-largefov"]
    assert DEEPLAB_CRF_PARAMS["deeplab-4x4"] == DEEPLAB_CRF_PARAMS["deeplab-largefov"]
    with pytest.raises(ValueError, match="unknown variant"):
        get_params("deeplab-v3")
    with pytest.raises(ValueError, match="positive"):
        CRFParams(w1=4, sa=0, sb=5, w2=3, sg=3)


def _numpy_reference(scores, rgb, p: CRFParams, iters):
    c, h, w = scores.shape
    ys, xs = np.mgrid[0:h, 0:w]
    pos = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
    bil = np.concatenate([pos / p.sa, rgb.reshape(-1, 3) / p.sb], 1)
    return np_mean_field(
        -scores.reshape(c, -1), [bil, pos / p.sg], [p.w1, p.w2], ["after", "after"], iters
    ).reshape(c, h, w)


def test_deeplab_crf_matches_numpy_reference():
    rng = np.random.default_rng(0)
    params = CRFParams(w1=4, sa=5, sb=20, w2=3, sg=2)
    rgb = rng.integers(0, 256, (2, 6, 7, 3), dtype=np.uint8)
    scores = rng.normal(size=(2, 3, 6, 7)).astype(np.float32) * 3
    q = deeplab_crf(scores, rgb, params, method="dense")
    assert isinstance(q, torch.Tensor) and q.shape == (2, 3, 6, 7)
    for b in range(2):
        ref = _numpy_reference(scores[b], rgb[b], params, 10)
        np.testing.assert_allclose(q[b].numpy(), ref, atol=2e-5)
    single = deeplab_crf(torch.from_numpy(scores[1]), rgb[1], params, method="dense")
    assert single.shape == (3, 6, 7)
    torch.testing.assert_close(single, q[1])
    # probabilities in: -log softmax(s) = -s + a per-pixel constant, so the same marginals
    probs = torch.softmax(torch.from_numpy(scores[1]), 0)
    from_probs = deeplab_crf(probs, rgb[1], params, probabilities=True, method="dense")
    torch.testing.assert_close(from_probs, single, atol=1e-5, rtol=0)


def test_deeplab_crf_rejects_mismatched_image():
    scores = np.zeros((3, 6, 7), np.float32)
    with pytest.raises(ValueError, match="does not match"):
        deeplab_crf(scores, np.zeros((6, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        deeplab_crf(scores, np.zeros((6, 7, 3), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        deeplab_crf(np.full((3, 6, 7), np.nan, np.float32), np.zeros((6, 7, 3), np.uint8))


def _noisy_scores(labels, num_classes, rng, noise=1.0):
    """Uncertain scores around the true labels: what a mediocre network would give."""
    onehot = np.eye(num_classes, dtype=np.float32)[labels].transpose(2, 0, 1)
    return 3.0 * onehot + rng.normal(scale=noise, size=onehot.shape).astype(np.float32)


class CachedExactFilter:
    """Exact Gaussian filtering with the (N, N) kernel built once (N small); explicit
    differences, so float32 loses nothing to cancellation."""

    def __init__(self, features):
        f = features[0]
        d2 = torch.zeros(f.shape[0], f.shape[0])
        for k in range(f.shape[1]):
            d2 += (f[:, None, k] - f[None, :, k]) ** 2
        self.kernel = torch.exp_(d2.mul_(-0.5))

    def apply(self, values):
        return (self.kernel @ values[0]).unsqueeze(0)


def test_lattice_agrees_with_exact_inference_on_real_images(voc_samples):
    """Full 10-iteration inference on real 64x48 crops, LargeFOV parameters, "after":
    lattice and exact filtering give >= 99.5% identical labels (0.11% measured on real images)."""
    rng = np.random.default_rng(0)
    agree = []
    for _, rgb, labels in voc_samples[:3]:
        y, x = labels.shape[0] // 2 - 24, labels.shape[1] // 2 - 32
        crop, lab = rgb[y : y + 48, x : x + 64], labels[y : y + 48, x : x + 64]
        scores = _noisy_scores(lab.astype(np.int64), 21, rng)
        fast = deeplab_crf(scores, crop, "deeplab-largefov").argmax(0)
        exact = deeplab_crf(scores, crop, "deeplab-largefov", method=CachedExactFilter)
        agree.append((fast == exact.argmax(0)).float().mean().item())
    assert min(agree) >= 0.995, agree


def test_cached_exact_filter_is_the_dense_filter():
    from deeplabv1.crf.torch.dense import DenseFilter

    f = torch.rand(1, 50, 5) * 3
    v = torch.rand(1, 50, 4)
    torch.testing.assert_close(CachedExactFilter(f).apply(v), DenseFilter(f).apply(v))


def test_crf_improves_noisy_labels(voc_samples):
    """On a real image the CRF must recover the labels better than the noisy unary alone."""
    rng = np.random.default_rng(1)
    _, rgb, labels = voc_samples[0]
    rgb, labels = rgb[100:250, 150:350], labels[100:250, 150:350]
    scores = _noisy_scores(labels.astype(np.int64), 21, rng, noise=2.0)
    before = (scores.argmax(0) == labels).mean()
    after = (deeplab_crf(scores, rgb).argmax(0).numpy() == labels).mean()
    assert after > before + 0.05, (before, after)


@requires_cuda
def test_cuda_matches_cpu(voc_samples):
    rng = np.random.default_rng(2)
    _, rgb, labels = voc_samples[1]
    scores = torch.from_numpy(_noisy_scores(labels.astype(np.int64), 21, rng))
    cpu = deeplab_crf(scores, rgb)
    gpu = deeplab_crf(scores.cuda(), rgb)
    assert gpu.is_cuda and gpu.shape == cpu.shape
    assert (gpu.argmax(0).cpu() == cpu.argmax(0)).float().mean() >= 0.999


def _torch_path(scores, rgb, params, iters=10, probabilities=False):
    """The torch route of the convention (deeplab_crf before the torch-free engine): torch
    unary, PairwiseTerms from deeplab_terms, meanfield.mean_field."""
    from deeplabv1.crf import deeplab_terms, mean_field
    from deeplabv1.crf.torch.unary import unary_from_probabilities

    s = torch.from_numpy(scores).reshape(-1, scores.shape[-3], rgb.shape[-3] * rgb.shape[-2])
    unary = unary_from_probabilities(s) if probabilities else -s
    return mean_field(unary, deeplab_terms(rgb, get_params(params)), iters).reshape(scores.shape)


def test_numpy_engine_equals_torch_path_bitwise(voc_samples):
    """deeplab_crf_np (numpy in and out) and deeplab_crf on CPU tensors give the torch path's
    marginals bit for bit on real images, single and batched; probabilities to float32
    rounding (numpy's and torch's float32 log differ by an ulp) with the same labels."""
    from deeplabv1.crf.deeplab import deeplab_crf_np

    rng = np.random.default_rng(3)
    crops = [(rgb[40:160, 60:220], lab[40:160, 60:220]) for _, rgb, lab in voc_samples[:2]]
    rgb = np.stack([c[0] for c in crops])
    scores = np.stack([_noisy_scores(c[1].astype(np.int64), 21, rng) for c in crops])
    threads = torch.get_num_threads()
    ref = _torch_path(scores, rgb, "deeplab-msc").numpy()
    got = deeplab_crf_np(scores, rgb, "deeplab-msc", threads=threads)
    assert type(got) is np.ndarray and got.dtype == np.float32 and got.shape == scores.shape
    np.testing.assert_array_equal(got, ref)
    one = deeplab_crf_np(scores[1], rgb[1], "deeplab-msc", threads=threads)
    np.testing.assert_array_equal(one, _torch_path(scores[1], rgb[1], "deeplab-msc").numpy())
    tensor = deeplab_crf(torch.from_numpy(scores[1]), rgb[1], "deeplab-msc")
    assert isinstance(tensor, torch.Tensor) and tensor.shape == scores[1].shape
    np.testing.assert_array_equal(tensor.numpy(), one)
    probs = torch.softmax(torch.from_numpy(scores), 1).numpy()
    ref_p = _torch_path(probs, rgb, "deeplab-msc", probabilities=True).numpy()
    got_p = deeplab_crf_np(probs, rgb, "deeplab-msc", probabilities=True, threads=threads)
    np.testing.assert_allclose(got_p, ref_p, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(got_p.argmax(1), ref_p.argmax(1))


def test_numpy_engine_checks_and_falls_back(monkeypatch):
    from deeplabv1.crf.deeplab import deeplab_crf_np
    from deeplabv1.crf.engine import threads as engine_threads

    rng = np.random.default_rng(4)
    scores = rng.normal(size=(3, 6, 7)).astype(np.float32)
    rgb = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="does not match"):
        deeplab_crf_np(scores, np.zeros((6, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        deeplab_crf_np(scores, rgb.astype(np.float32))
    with pytest.raises(ValueError, match="NaN"):
        deeplab_crf_np(np.full((3, 6, 7), np.nan, np.float32), rgb)
    with pytest.raises(ValueError, match="outside"):
        deeplab_crf_np(scores, rgb, probabilities=True)
    with pytest.raises(ValueError, match="iters"):
        deeplab_crf_np(scores, rgb, iters=-1)
    fast = deeplab_crf_np(scores, rgb, "deeplab", 3)
    # without numba (DEEPLABV1_CRF_NUMBA=0 or not installed): the torch path, same answer type
    monkeypatch.setattr(engine_threads, "available", lambda: False)
    slow = deeplab_crf_np(scores, rgb, "deeplab", 3)
    assert type(slow) is np.ndarray and slow.shape == (3, 6, 7)
    np.testing.assert_allclose(slow, fast, atol=1e-5, rtol=0)


def test_every_public_crf_name_resolves_and_the_numpy_ones_need_no_torch():
    import subprocess
    import sys

    import deeplabv1.crf as crf

    for name in crf.__all__:
        assert getattr(crf, name) is not None, name
    code = ("import sys; from deeplabv1.crf import deeplab_crf_np, deeplab_features, "
            "set_num_threads, get_params; from deeplabv1.crf import densecrf, utils, eigen; "
            "import deeplabv1.crf.pydensecrf.densecrf; print('torch' in sys.modules, "
            "'numba' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"  # numba loads with the first CRF


def _resolve(dotted: str):
    """The object a dotted name names: the longest importable module prefix, then attributes."""
    import importlib

    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for attr in parts[k:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def test_documented_crf_names_resolve():
    """Every deeplabv1.crf name the README and the CRF docs mention (dotted paths and
    ``from deeplabv1.crf... import`` lines) imports, earlier module paths included."""
    import re

    from conftest import REPO

    text = "".join((REPO / f).read_text() for f in ("README.md", "docs/crf.md",
                                                     "docs/crf_lattice.md"))  # fmt: skip
    names = set(re.findall(r"deeplabv1\.crf(?:\.\w+)+", text))
    for module, imported in re.findall(r"from (deeplabv1\.crf[\w.]*) import ([\w, ]+)", text):
        names |= {f"{module}.{n.strip().split(' as ')[0]}" for n in imported.split(",")}
    names |= {f"deeplabv1.crf.{old}" for old in ("layer", "learned", "lattice", "meanfield",
                                                  "dense", "unary", "numpy_meanfield",
                                                  "numpy_lattice")}  # fmt: skip
    assert len(names) > 20
    for name in sorted(names):
        assert _resolve(name.rstrip(".")) is not None, name
    old = _resolve("deeplabv1.crf.layer")  # an earlier path: the same module object
    assert old is _resolve("deeplabv1.crf.torch.layer")
    assert old.CRFLayer is _resolve("deeplabv1.crf.CRFLayer")


def test_learned_compatibilities_run_on_the_engine(monkeypatch):
    """docs/crf.md: on the CPU deeplab_crf and deeplab_crf_np both run the torch-free engine,
    learned (matrix) compatibilities included, with bitwise the same marginals; the torch
    path (mean_field over deeplab_terms) gives them to float32 rounding."""
    from deeplabv1.crf.deeplab import deeplab_crf_np
    from deeplabv1.crf.torch import meanfield
    from deeplabv1.crf.torch.learned import LearnedCRFParams

    rng = np.random.default_rng(5)
    mu = 1 - np.eye(3) + 0.3 * rng.normal(size=(3, 3))
    mu = 0.5 * (mu + mu.T)
    params = LearnedCRFParams(w1=4, sa=5, sb=20, w2=3, sg=2,
                              compat=tuple(map(tuple, mu.tolist())))  # fmt: skip
    scores = (rng.normal(size=(3, 12, 14)) * 2).astype(np.float32)
    rgb = rng.integers(0, 256, (12, 14, 3), dtype=np.uint8)
    with monkeypatch.context() as m:  # mean_field's own torch loop, not the engine it calls
        m.setattr(meanfield, "_numba_eligible", lambda *args: False)
        ref = _torch_path(scores, rgb, params).numpy()

    def no_torch_path(*args, **kwargs):
        raise AssertionError("the torch path ran")

    monkeypatch.setattr(meanfield, "mean_field", no_torch_path)
    got = deeplab_crf(torch.from_numpy(scores), rgb, params).numpy()
    np.testing.assert_array_equal(
        got, deeplab_crf_np(scores, rgb, params, threads=torch.get_num_threads())
    )
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    potts = deeplab_crf_np(scores, rgb, CRFParams(4, 5, 20, 3, 2))
    assert np.abs(potts - got).max() > 1e-3  # the compatibility is used


def test_layout_table_names_the_files_there_are():
    """docs/crf_lattice.md's layout table: every file it names exists, and every module of
    src/deeplabv1/crf/ (packages' __init__.py aside) is in it. A row's bare file names are
    in the folder of the row's first path (`engine/jit.py`, `threads.py`: engine/)."""
    import re

    from conftest import REPO

    text = (REPO / "docs" / "crf_lattice.md").read_text()
    table = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    crf = REPO / "src" / "deeplabv1" / "crf"
    named = set()
    for row in (line for line in table.splitlines() if line.startswith("| `")):
        cells = row.split("|")[1:-1]
        first = re.findall(r"`([\w./]+)`", cells[0])
        folder = first[0].rsplit("/", 1)[0] + "/" if "/" in first[0] else ""
        for name in re.findall(r"`([\w./]+\.py)`", " ".join(cells[:2])):
            path = name if "/" in name else folder + name
            named.add(path)
            assert (crf / path).is_file(), f"{path} (named in crf_lattice.md) does not exist"
    modules = {p.relative_to(crf).as_posix() for p in crf.rglob("*.py")}
    modules -= {m for m in modules if m.endswith("/__init__.py")}
    assert modules - named == set(), "modules the layout table does not name"
