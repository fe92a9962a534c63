"""CRF search: the grid optimum against an exhaustive evaluation, refinement, resume, processes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deeplabv1.crf import CRFParams, deeplab_crf
from deeplabv1.data.datasets import voc_dataset
from deeplabv1.data.synth import make_synthetic_voc
from deeplabv1.errors import DeepLabError
from deeplabv1.evaluate import crf_search as cs
from deeplabv1.evaluate.config import CRFSearchConfig
from deeplabv1.evaluate.metrics import confusion_matrix, mean_iou
from deeplabv1.evaluate.run import run_crf_search
from deeplabv1.evaluate.scores import full_scores, save_scores, write_meta

NUM_CLASSES = 4
GRID = dict(w1_min=1.0, w1_max=5.0, w1_step=4.0, sa_min=4.0, sa_max=12.0, sa_step=8.0,
            sb_min=5.0, sb_max=35.0, sb_step=30.0, w2=1.0, sg=1.0)  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """3 synthetic images with blurred, noisy one-hot 'network' scores on the stride-8 grid."""
    root = tmp_path_factory.mktemp("search")
    data = make_synthetic_voc(root / "voc", 3, size=(25, 17), num_classes=NUM_CLASSES, seed=1)
    ds = voc_dataset(data, "trainval", num_classes=NUM_CLASSES)
    rng = np.random.default_rng(0)
    for i, sid in enumerate(ds.ids):
        _, labels = ds.load(i)
        lab = np.where(labels == 255, 0, labels)[::8, ::8]  # 25x17 -> 4x3 cells, zoom -> 25x17
        coarse = 3.0 * np.eye(NUM_CLASSES)[lab].transpose(2, 0, 1)
        coarse += rng.normal(0, 1.5, coarse.shape)
        save_scores(root / "scores", sid, coarse, *labels.shape)
    write_meta(root / "scores", {"arch": "deeplab-largefov", "num_classes": NUM_CLASSES})
    return root, data, ds


def search_config(root, data, out, **kw):
    base = dict(
        scores=str(root / "scores"),
        data=str(data),
        split="trainval",
        num_images=3,
        iters=2,
        method="dense",
        refine_rounds=0,
        progress=False,
        out=str(out),
        **GRID,
    )
    base.update(kw)
    return CRFSearchConfig(**base)


def exhaustive(ds, root, points):
    """mean IoU (%) of every point, computed directly with deeplab_crf."""
    from deeplabv1.evaluate.scores import load_scores

    out = {}
    for point in points:
        conf = 0
        for i, sid in enumerate(ds.ids):
            rgb, labels = ds.load(i)
            coarse, h, w, f, crop = load_scores(root / "scores", sid)
            probs = deeplab_crf(full_scores(coarse, h, w, f, crop), rgb, CRFParams(*point), 2,
                                method="dense")  # fmt: skip
            conf = conf + confusion_matrix(probs.argmax(0).numpy(), labels, NUM_CLASSES)
        out[point] = 100 * mean_iou(conf)
    return out


def test_grid_optimum_matches_exhaustive_and_resume(tiny, tmp_path, monkeypatch):
    root, data, ds = tiny
    cfg = search_config(root, data, tmp_path / "s")
    grid = cs.coarse_grid(cfg)
    assert len(grid) == 8 and grid[0] == (1.0, 4.0, 5.0, 1.0, 1.0)
    truth = exhaustive(ds, root, grid)
    search = run_crf_search(cfg)
    got = {cs.point_key(r[n] for n in cs.PARAM_NAMES): r["mean_iou"] for r in search["records"]}
    assert set(got) == set(truth)
    for p in grid:
        assert got[p] == pytest.approx(truth[p], abs=1e-3)
    best = max(grid, key=lambda p: (truth[p], tuple(-v for v in p)))
    assert cs.point_key(search["best"][n] for n in cs.PARAM_NAMES) == best
    assert len(set(round(v, 3) for v in truth.values())) > 1  # the grid is not flat
    best_json = json.loads((tmp_path / "s" / "best.json").read_text())
    assert best_json["best"]["mean_iou"] == search["best"]["mean_iou"]
    # the baseline: the arg-max of the zoomed scores without the CRF, and the gain over it
    from deeplabv1.evaluate.scores import load_scores

    zoomed = [full_scores(*load_scores(root / "scores", sid)) for sid in ds.ids]
    unary = sum(confusion_matrix(z.argmax(0).numpy(), ds.load(i)[1], NUM_CLASSES)
                for i, z in enumerate(zoomed))  # fmt: skip
    assert best_json["unary"]["mean_iou"] == pytest.approx(100 * mean_iou(unary), abs=1e-3)
    assert best_json["gain"] == pytest.approx(truth[best] - 100 * mean_iou(unary), abs=2e-3)
    assert best_json["num_points"] == 8
    assert "Best: w1" in (tmp_path / "s" / "search.md").read_text()
    # without --resume an existing search is refused, never overwritten
    with pytest.raises(DeepLabError, match="resume"):
        run_crf_search(cfg)
    # drop three points as if interrupted: resume evaluates exactly those
    points_file = tmp_path / "s" / cs.POINTS_NAME
    lines = points_file.read_text().splitlines()
    points_file.write_text("\n".join(lines[:5]) + "\n")
    calls = []
    real = cs.evaluate_point
    monkeypatch.setattr(cs, "evaluate_point", lambda p: calls.append(p) or real(p))
    again = run_crf_search(search_config(root, data, tmp_path / "s", resume=True))
    assert len(calls) == 3 and len(points_file.read_text().splitlines()) == 8
    assert again["best"]["mean_iou"] == search["best"]["mean_iou"]
    # a resume with other settings that change the points or the search is refused, naming
    # each difference, and the points stay as they were
    before = points_file.read_bytes()
    changes = {"iters": 3, "w2": 5.0, "sg": 2.0, "sb_max": 45.0, "refine_rounds": 1}
    for key, value in changes.items():
        with pytest.raises(DeepLabError, match="other settings") as err:
            run_crf_search(search_config(root, data, tmp_path / "s", resume=True, **{key: value}))
        assert f"{key} {GRID.get(key, search_config(root, data, 'x').__dict__[key])!r} -> " \
            f"{value!r}" in str(err.value)  # fmt: skip
    assert points_file.read_bytes() == before


def test_parallel_processes_give_the_same_records(tiny, tmp_path):
    root, data, _ = tiny
    serial = run_crf_search(search_config(root, data, tmp_path / "a", w1_max=1.0))
    parallel = run_crf_search(search_config(root, data, tmp_path / "b", w1_max=1.0, jobs=2))
    key = lambda r: cs.point_key(r[n] for n in cs.PARAM_NAMES)  # noqa: E731
    assert {key(r): r["mean_iou"] for r in serial["records"]} == {
        key(r): r["mean_iou"] for r in parallel["records"]
    }


def test_refinement_reaches_the_finer_optimum(tiny, tmp_path, monkeypatch):
    root, data, _ = tiny

    def fake(point):  # a smooth objective with its maximum at w1 6, sa 72, sb 4.4
        w1, sa, sb = point[:3]
        value = 60 - (w1 - 6) ** 2 - ((sa - 72) / 10) ** 2 - (sb - 4.4) ** 2
        return dict(zip(cs.PARAM_NAMES, point), mean_iou=value, pixel_accuracy=0, seconds=0)

    monkeypatch.setattr(cs, "evaluate_point", fake)
    cfg = search_config(root, data, tmp_path / "r", refine_rounds=1, w1_min=5.0, w1_max=10.0,
                        w1_step=5.0, sa_min=50.0, sa_max=100.0, sa_step=10.0, sb_min=3.0,
                        sb_max=10.0, sb_step=1.0, w2=3.0, sg=3.0)  # fmt: skip
    search = run_crf_search(cfg)
    coarse = cs.coarse_grid(cfg)
    assert len(coarse) == 2 * 6 * 8  # the paper's grid with the authors' w1 {5, 10}
    assert search["rounds"][0]["best"]["sa"] == 70.0 and search["rounds"][0]["best"]["sb"] == 4.0
    fine = cs.refine_grid((5.0, 70.0, 4.0, 3.0, 3.0), (2.5, 5.0, 0.5), cs.grid_bounds(cfg))
    assert sorted({p[2] for p in fine}) == [3.0, 3.5, 4.0, 4.5, 5.0]
    assert sorted({p[0] for p in fine}) == [5.0, 7.5, 10.0]  # not 2.5: below --w1-min 5
    every = set(coarse) | set(fine)
    assert len(search["records"]) == len(every)
    best = max(every, key=lambda p: fake(p)["mean_iou"])
    assert best == (5.0, 70.0, 4.5, 3.0, 3.0)
    assert cs.point_key(search["best"][n] for n in cs.PARAM_NAMES) == best


def test_refinement_stays_within_the_grid_bounds(tiny, tmp_path, monkeypatch):
    root, data, _ = tiny

    def fake(point):  # best where sa is smallest: refinement would step below --sa-min
        return dict(zip(cs.PARAM_NAMES, point), mean_iou=100 - point[1], pixel_accuracy=0,
                    seconds=0)  # fmt: skip

    monkeypatch.setattr(cs, "evaluate_point", fake)
    cfg = search_config(root, data, tmp_path / "r", refine_rounds=2, sa_min=40.0, sa_max=60.0,
                        sa_step=20.0)  # fmt: skip
    search = run_crf_search(cfg)
    assert search["best"]["sa"] == 40.0
    for name in ("w1", "sa", "sb"):
        lo, hi = getattr(cfg, f"{name}_min"), getattr(cfg, f"{name}_max")
        assert all(lo <= r[name] <= hi for r in search["records"]), name


def test_scores_round_trip_exactly(tmp_path):
    coarse = torch.randn(3, 5, 4)
    save_scores(tmp_path, "x", coarse, 33, 25, compress=True)
    from deeplabv1.evaluate.scores import load_scores

    back, h, w, f, crop = load_scores(tmp_path, "x")
    np.testing.assert_array_equal(back, coarse.numpy())
    assert (h, w, f) == (33, 25, 8)
    assert tuple(full_scores(back, h, w, f, crop).shape) == (3, 33, 25)


@pytest.mark.parametrize("cut", ["empty", "half", "end", "npy"])
def test_a_damaged_score_file_is_skipped_naming_it(tiny, tmp_path, capsys, cut):
    """`crf-search --scores` with a score file that is empty, cut short or not an archive: one
    line naming the file, no traceback; the search goes on over the other images (exit 1), and
    with none left is one error line and leaves no folder behind."""
    import shutil

    from deeplabv1.cli import main

    root, data, ds = tiny
    scores = tmp_path / "scores"
    shutil.copytree(root / "scores", scores)
    bad = scores / f"{ds.ids[1]}.npz"
    whole = bad.read_bytes()
    if cut == "npy":
        np.save(tmp_path / "a.npy", np.zeros((4, 3, 3), np.float32))
        bad.write_bytes((tmp_path / "a.npy").read_bytes())
    else:
        bad.write_bytes({"empty": b"", "half": whole[: len(whole) // 2], "end": whole[:-30]}[cut])
    argv = ["crf-search", "--scores", str(scores), "--data", str(data), "--split", "trainval",
            "--num-images", "3", "--iters", "1", "--refine-rounds", "0", "--progress", "false",
            "-o", str(tmp_path / "out")]  # fmt: skip
    argv += [f"--{k.replace('_', '-')}={v}" for k, v in GRID.items()]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("deeplabv1 crf-search: skipped")]
    assert len(lines) == 1 and str(bad) in lines[0] and "score file" in lines[0], err
    assert json.loads((tmp_path / "out" / "best.json").read_text())["setup"]["num_images"] == 2
    for sid in ds.ids:
        (scores / f"{sid}.npz").write_bytes(bad.read_bytes())
    argv[-len(GRID) - 1] = str(tmp_path / "none")
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("deeplabv1 crf-search: error")]
    assert len(lines) == 1 and "no usable image left" in lines[0] and "score file" in lines[0]
    assert not (tmp_path / "none").exists()
