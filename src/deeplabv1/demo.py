"""The CPU demo (``make demo``): the paper's whole pipeline, small, in a few minutes.

    python -m deeplabv1.demo --out demo_out

1. synthesise a VOC-layout dataset (``deeplabv1.data.synth``): train / val / a held-out
   "tune" part for the CRF;
2. train a reduced-width DeepLab-LargeFOV with the real training loop (``train.loop.train``);
3. save the tune and val score maps with the real evaluator; cross-validate the CRF on the tune
   part with the real ``crf-search`` (a small grid around the paper's values);
4. evaluate val with and without the CRF (mean IoU and trimap) with the best parameters;
5. write predictions, figures (image | network | network + CRF | ground truth; trimap curve),
   ``report.md`` and ``demo.json``.

Everything is seeded; ``--quick`` is the miniature run of the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class DemoSettings:
    """Sizes of the demo run (the defaults take a few minutes on 2 CPU cores)."""

    num_train: int = 160
    num_val: int = 60
    num_tune: int = 24
    size: tuple[int, int] = (96, 72)  # (W, H) of the synthetic images
    num_classes: int = 3
    width: float = 0.25
    crop_size: int = 73
    batch_size: int = 8
    max_iter: int = 1500  # to convergence: a shorter run ends wherever the CPU's rounding took it
    base_lr: float = 5e-3  # from scratch (no ImageNet weights): 5x the paper's; 1e-2 can diverge
    dropout: float = 0.0  # the paper's 0.5 only slows this tiny from-scratch run down
    test_size: int = 97
    search: bool = True
    search_grid: dict = dataclasses.field(
        default_factory=lambda: dict(
            w1_min=2.0,
            w1_max=4.0,
            w1_step=2.0,
            sa_min=5.0,
            sa_max=25.0,
            sa_step=10.0,
            sb_min=5.0,
            sb_max=15.0,
            sb_step=5.0,
            w2=3.0,
            sg=3.0,
        )  # fmt: skip
    )
    trimap_max_width: int = 20
    num_figure_rows: int = 4
    seed: int = 0


QUICK = DemoSettings(num_train=12, num_val=4, num_tune=3, size=(48, 40), width=1 / 16,
                     crop_size=41, batch_size=4, max_iter=8, test_size=49,
                     search_grid=dict(w1_min=3.0, w1_max=5.0, w1_step=2.0, sa_min=10.0,
                                      sa_max=10.0, sa_step=10.0, sb_min=10.0, sb_max=10.0,
                                      sb_step=10.0, w2=3.0, sg=3.0),
                     trimap_max_width=10, num_figure_rows=2)  # fmt: skip


def make_data(out: Path, s: DemoSettings) -> Path:
    """Synthetic VOC root with train / val / tune lists (tune = held out for the CRF search)."""
    from deeplabv1.data.synth import make_synthetic_voc
    from deeplabv1.data.voc import SEGMENTATION_LISTS, write_ids

    total = s.num_train + s.num_val + s.num_tune
    root = make_synthetic_voc(out / "data", total, size=s.size, seed=s.seed,
                              num_classes=s.num_classes, val_fraction=0.0)  # fmt: skip
    ids = [f"synth_{i:05d}" for i in range(total)]
    lists = root / SEGMENTATION_LISTS
    write_ids(lists / "train.txt", ids[: s.num_train])
    write_ids(lists / "tune.txt", ids[s.num_train : s.num_train + s.num_tune])
    write_ids(lists / "val.txt", ids[s.num_train + s.num_tune :])
    return root


def train_model(root: Path, out: Path, s: DemoSettings, progress: bool) -> Path:
    """Train the reduced-width DeepLab-LargeFOV with the real loop; return final.pt."""
    from deeplabv1.train.config import TrainConfig
    from deeplabv1.train.loop import train

    cfg = TrainConfig(
        arch="deeplab-largefov", num_classes=s.num_classes, width=s.width, data_root=str(root),
        split="train", label_dir="SegmentationClass", crop_size=s.crop_size,
        batch_size=s.batch_size, max_iter=s.max_iter, base_lr=s.base_lr, dropout=s.dropout,
        step_size=max(1, int(s.max_iter * 0.75)), workers=0, out_dir=str(out / "train"),
        checkpoint_every=0, log_every=max(1, s.max_iter // 20), progress=progress,
        tensorboard=False, device="cpu", seed=s.seed,
    )  # fmt: skip
    return train(cfg)


def evaluate_split(weights, root: Path, split: str, out: Path, s: DemoSettings, **kw) -> dict:
    """``deeplabv1 eval`` on one split of the demo data (network, optionally + CRF)."""
    from deeplabv1.evaluate.config import EvalConfig
    from deeplabv1.evaluate.run import run_eval

    cfg = EvalConfig(weights=str(weights), data=str(root), split=split,
                     label_dir="SegmentationClass", test_size=s.test_size, device="cpu",
                     progress=False, out=str(out), **kw)  # fmt: skip
    return run_eval(cfg)


def tune_crf(scores: Path, root: Path, out: Path, s: DemoSettings) -> dict:
    """``deeplabv1 crf-search`` on the held-out tune images; returns the best record."""
    from deeplabv1.evaluate.config import CRFSearchConfig
    from deeplabv1.evaluate.run import run_crf_search

    cfg = CRFSearchConfig(scores=str(scores), data=str(root), split="tune",
                          label_dir="SegmentationClass", num_images=s.num_tune,
                          refine_rounds=0, jobs=1, progress=False, resume=True, out=str(out),
                          **s.search_grid)  # fmt: skip
    return run_crf_search(cfg)["best"]


def write_figure(root: Path, val_out: Path, path: Path, s: DemoSettings) -> Path:
    """image | network | network + CRF | ground truth for the first val images."""
    from deeplabv1.data.datasets import voc_dataset
    from deeplabv1.data.palette import VOC_CLASSES, colorize, read_label_png
    from deeplabv1.viz.figures import side_by_side

    ds = voc_dataset(root, "val", label_dir="SegmentationClass", num_classes=s.num_classes)
    rows, classes = [], set()
    for i in range(min(s.num_figure_rows, len(ds))):
        rgb, gt = ds.load(i)
        net = read_label_png(val_out / "predictions" / "network" / f"{ds.ids[i]}.png")
        crf = read_label_png(val_out / "predictions" / "crf" / f"{ds.ids[i]}.png")
        rows.append([("image", rgb), ("network", colorize(net)),
                     ("network + CRF", colorize(crf)), ("ground truth", colorize(gt))])  # fmt: skip
        classes |= {int(c) for c in set(gt.ravel()) | set(crf.ravel()) if c < s.num_classes}
    caption = (f"DeepLab-LargeFOV, width {s.width:g}, trained from scratch on {s.num_train} "
               "synthetic images; CRF parameters from crf-search on held-out images")  # fmt: skip
    return side_by_side(rows, path, classes=sorted(classes),
                        class_names=VOC_CLASSES[: s.num_classes], caption=caption)  # fmt: skip


def summary(results: dict) -> dict:
    """mean IoU and trimap curve per method, from a results dict."""
    out = {}
    widths = results["trimap"]["widths"]
    for m, r in results["methods"].items():
        trimap = dict(zip(widths, results["trimap"][m]))
        out[m] = {"mean_iou": r["mean_iou"], "pixel_accuracy": r["pixel_accuracy"]}
        out[m]["trimap"] = trimap
    return out


def report_markdown(demo: dict, results_md: str) -> str:
    """The demo's report.md: the numbers, the CRF parameters, the figures."""
    net, crf = demo["summary"]["network"], demo["summary"]["crf"]
    p = demo["crf_params"]
    lines = [
        "# DeepLab V1 demo (synthetic data, CPU)", "",
        f"- data: {demo['settings']['num_train']} train / {demo['settings']['num_tune']} tune / "
        f"{demo['settings']['num_val']} val synthetic images of "
        f"{demo['settings']['size'][0]}x{demo['settings']['size'][1]} px",
        f"- network: DeepLab-LargeFOV at width {demo['settings']['width']:g}, "
        f"{demo['settings']['max_iter']} iterations of batch {demo['settings']['batch_size']}",
        f"- CRF (crf-search on the tune images): w1 = {p['w1']:g}, sa = {p['sa']:g}, "
        f"sb = {p['sb']:g}, w2 = {p['w2']:g}, sg = {p['sg']:g}",
        f"- val mean IoU: network {net['mean_iou']:.2f}%, network + CRF {crf['mean_iou']:.2f}%",
        "- trimap mean IoU at w = 1 / 3 / 5: network "
        + " / ".join(f"{net['trimap'][w]:.2f}" for w in (1, 3, 5))
        + ", network + CRF " + " / ".join(f"{crf['trimap'][w]:.2f}" for w in (1, 3, 5)),
        f"- time: {demo['timing']['total_s']:.0f} s wall "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in demo['timing'].items() if k != 'total_s')})",
        "", "![predictions](figure.png)", "", "![trimap](val/trimap.png)", "",
    ]  # fmt: skip
    return "\n".join(lines) + "\n" + results_md.replace("# Evaluation", "## Evaluation")


@contextlib.contextmanager
def reproducible(threads: int = 1):
    """Fixed thread counts (torch and the CRF engine) and torch's deterministic algorithms.

    A run is then bit-identical on one machine; across machines the kernels differ with the
    CPU's vector instructions, which is why the demo trains to convergence (see the README).
    ``threads=0`` leaves the thread counts alone.
    """
    import torch

    from deeplabv1 import crf

    before = (torch.get_num_threads(), crf.get_num_threads(),
              torch.are_deterministic_algorithms_enabled())  # fmt: skip
    if threads:
        torch.set_num_threads(threads)
        crf.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        crf.set_num_threads(before[1])
        torch.use_deterministic_algorithms(before[2])


def run_demo(out: Path, s: DemoSettings, progress: bool = True, threads: int = 1) -> dict:
    """The whole demo into ``out``; returns demo.json's content."""
    with reproducible(threads):
        return _run_demo(out, s, progress)


def spread(values: list[float]) -> dict:
    """n, mean, sample standard deviation, min and max of a figure over seeds."""
    import statistics

    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"n": len(values), "mean": statistics.fmean(values), "sd": sd,
            "min": min(values), "max": max(values)}  # fmt: skip


def format_spread(x: dict) -> str:
    """``mean ± sd (min-max)``."""
    return f"{x['mean']:.2f} ± {x['sd']:.2f} ({x['min']:.2f}-{x['max']:.2f})"


SEED_FIGURES = {  # name -> (method, trimap width or None for mean IoU)
    "network mean IoU": ("network", None),
    "network + CRF mean IoU": ("crf", None),
    "network trimap w=1": ("network", 1),
    "network + CRF trimap w=1": ("crf", 1),
}


def seed_summary(runs: dict[int, dict]) -> dict:
    """Mean and spread over seeds of the demo's figures; ``runs``: seed -> demo.json."""
    out = {"seeds": sorted(runs), "figures": {}}
    for name, (method, width) in SEED_FIGURES.items():
        values = []
        for demo in runs.values():
            m = demo["summary"][method]
            values.append(m["mean_iou"] if width is None else m["trimap"][width])
        out["figures"][name] = spread(values)
    gains = [d["summary"]["crf"]["mean_iou"] - d["summary"]["network"]["mean_iou"]
             for d in runs.values()]  # fmt: skip
    out["figures"]["CRF gain (mean IoU)"] = spread(gains)
    return out


def _run_demo(out: Path, s: DemoSettings, progress: bool) -> dict:
    from deeplabv1.io import atomic_write_json, atomic_write_text

    timing: dict[str, float] = {}
    t_all = t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        timing[name] = round(time.perf_counter() - t, 1)
        print(f"[demo] {name}: {timing[name]:.1f} s", flush=True)
        t = time.perf_counter()

    out.mkdir(parents=True, exist_ok=True)
    root = make_data(out, s)
    lap("data")
    weights = train_model(root, out, s, progress)
    lap("train")
    if s.search:
        evaluate_split(weights, root, "tune", out / "tune", s, save_scores=str(out / "scores"))
        best = tune_crf(out / "scores", root, out / "crf_search", s)
        params = {k: best[k] for k in ("w1", "sa", "sb", "w2", "sg")}
    else:
        params = dict(w1=4.0, sa=121.0, sb=5.0, w2=3.0, sg=3.0)
    lap("crf_search")
    results = evaluate_split(weights, root, "val", out / "val", s, crf=True, trimap=True,
                             trimap_max_width=s.trimap_max_width, save_predictions=True,
                             **params)  # fmt: skip
    lap("eval")
    write_figure(root, out / "val", out / "figure.png", s)
    timing["total_s"] = round(time.perf_counter() - t_all, 1)
    demo = {"settings": dataclasses.asdict(s), "crf_params": params,
            "summary": summary(results), "timing": timing,
            "weights": str(weights), "results": str(out / "val" / "results.json")}  # fmt: skip
    net, crf = demo["summary"]["network"], demo["summary"]["crf"]
    demo["crf_improves"] = {
        "mean_iou": crf["mean_iou"] > net["mean_iou"],
        "trimap_w1_to_5": all(crf["trimap"][w] > net["trimap"][w] for w in range(1, 6)),
    }
    atomic_write_json(out / "demo.json", demo)
    md = report_markdown(demo, (out / "val" / "results.md").read_text())
    atomic_write_text(out / "report.md", md)
    return demo


def print_demo(demo: dict, out: Path) -> None:
    """The figures of one run, as ``make demo`` prints them."""
    net, crf = demo["summary"]["network"], demo["summary"]["crf"]
    print(f"\nval mean IoU: network {net['mean_iou']:.2f}%  network + CRF {crf['mean_iou']:.2f}%")
    for w in (1, 2, 3, 5, 10):
        if w in net["trimap"]:
            print(f"trimap w={w:>2}: network {net['trimap'][w]:.2f}%  "
                  f"network + CRF {crf['trimap'][w]:.2f}%")  # fmt: skip
    print(f"total {demo['timing']['total_s']:.0f} s; report: {out / 'report.md'}")
    if not all(demo["crf_improves"].values()):
        print(f"WARNING: the CRF did not improve everything here: {demo['crf_improves']}")


def run_seeds(out: Path, s: DemoSettings, seeds: list[int], progress: bool, threads: int) -> dict:
    """The demo once per seed (``out/seed_<n>``), then mean and spread: ``out/seeds.json``."""
    from deeplabv1.io import atomic_write_json

    runs = {}
    for seed in seeds:
        runs[seed] = run_demo(out / f"seed_{seed}", dataclasses.replace(s, seed=seed),
                              progress=progress, threads=threads)  # fmt: skip
        net, crf = runs[seed]["summary"]["network"], runs[seed]["summary"]["crf"]
        print(f"[demo] seed {seed}: network {net['mean_iou']:.2f}%, "
              f"network + CRF {crf['mean_iou']:.2f}%", flush=True)  # fmt: skip
    summary = seed_summary(runs)
    summary["runs"] = {str(k): v["summary"] for k, v in runs.items()}
    atomic_write_json(out / "seeds.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    """``python -m deeplabv1.demo --out demo_out [--quick] [--seeds 0 1 2 3 4]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    parser.add_argument("--quick", action="store_true", help="the miniature run of the tests")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch and CRF threads, fixed for reproducible runs (0 = defaults)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and training")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        metavar="SEED",
        help="run once per seed into OUT/seed_<n>; print mean and spread",
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    settings = dataclasses.replace(QUICK if args.quick else DemoSettings(), seed=args.seed)
    if args.seeds:
        summary = run_seeds(args.out, settings, args.seeds, not args.no_progress, args.threads)
        print(f"\nval, mean ± sd (min-max) over seeds {' '.join(map(str, args.seeds))}:")
        for name, x in summary["figures"].items():
            print(f"{name:26s} {format_spread(x)}")
        print(f"per seed: {args.out / 'seeds.json'}")
        return 0
    demo = run_demo(args.out, settings, progress=not args.no_progress, threads=args.threads)
    print_demo(demo, args.out)
    return 0


def _main() -> int:
    """``main`` with a missing optional dependency (torch) as one line naming the extra."""
    from deeplabv1.cli import missing_extra

    try:
        return main()
    except ModuleNotFoundError as exc:
        hint = missing_extra(exc)
        if hint is None:
            raise
        print(f"deeplabv1.demo: {hint}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_main())
