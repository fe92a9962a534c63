"""Network alone vs + grid-searched CRF vs + end-to-end CRF on the synthetic demo data.

    .venv/bin/python benchmarks/crf_end_to_end.py --out runs/crf_e2e          # a few minutes
    .venv/bin/python benchmarks/crf_end_to_end.py --out runs/crf_e2e --seeds 0 1 2 3 4
    .venv/bin/python benchmarks/crf_end_to_end.py --out /tmp/e2e --quick      # seconds

1. the demo's data and stage-1 network (``deeplabv1.demo``: reduced-width DeepLab-LargeFOV
   trained from scratch with the real loop);
2. ``crf-search`` on the held-out tune images -> the grid-searched CRF;
3. joint fine-tuning (``train.crf_finetune``) of the network and the CRF layer, initialised
   from the grid-searched CRF (5 mean-field updates in training);
4. ``eval`` on val with trimap for: the stage-1 network, + grid-searched CRF, the jointly
   fine-tuned network alone, + its learned CRF (10 updates, from the checkpoint's ``crf``).

Steps 1-2 are ``make demo``'s (same settings, seed and code), so rows 1-2 are the demo's figures.
Runs are reproducible on one machine (``deeplabv1.demo.reproducible``: fixed threads, torch's
deterministic algorithms); ``--seeds`` runs each seed into ``OUT/seed_<n>`` and reports the mean
and spread, the figure to compare across machines. Writes ``table.md`` and
``crf_end_to_end.json`` into ``--out`` (with ``--seeds``: ``seeds.md``, ``seeds.json``) and
prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

TRIMAP_WIDTHS = (1, 3, 5, 10, 20)


def stage1_config(out: Path):
    """The TrainConfig the demo trained with (its config.yaml)."""
    import yaml

    from deeplabv1.train.config import TrainConfig

    return TrainConfig(**yaml.safe_load((out / "train" / "config.yaml").read_text()))


def with_crf(weights: Path, params: dict, path: Path) -> Path:
    """A copy of a checkpoint with a ``crf`` entry (the grid-searched parameters)."""
    from deeplabv1.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(weights)
    extra = {k: v for k, v in ckpt.items() if k not in ("model", "arch", "num_classes", "width",
                                                         "model_kwargs", "config", "format",
                                                         "format_version")}  # fmt: skip
    extra["crf"] = {k: float(v) for k, v in params.items()}
    save_checkpoint(path, ckpt["model"], arch=ckpt["arch"], num_classes=ckpt["num_classes"],
                    width=ckpt["width"], model_kwargs=ckpt["model_kwargs"],
                    config=ckpt["config"], **extra)  # fmt: skip
    return path


def row(name: str, results: dict, method: str) -> dict:
    widths = results["trimap"]["widths"]
    curve = dict(zip(widths, results["trimap"][method]))
    r = results["methods"][method]
    return {"method": name, "mean_iou": r["mean_iou"], "pixel_accuracy": r["pixel_accuracy"],
            "trimap": {w: curve[w] for w in TRIMAP_WIDTHS if w in curve}}  # fmt: skip


def table_markdown(rows: list[dict]) -> str:
    widths = [w for w in TRIMAP_WIDTHS if w in rows[0]["trimap"]]
    head = "| method | mean IoU % | pixel acc. % | " + " | ".join(
        f"trimap w={w}" for w in widths) + " |"  # fmt: skip
    lines = [head, "|" + "---|" * (3 + len(widths))]
    for r in rows:
        cells = [r["method"], f"{r['mean_iou']:.2f}", f"{r['pixel_accuracy']:.2f}"]
        cells += [f"{r['trimap'][w]:.2f}" for w in widths]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run(
    out: Path,
    quick: bool,
    stage2_iters: int,
    crf_lr: float,
    base_lr: float,
    reuse: bool = False,
    seed: int = 0,
) -> dict:
    from deeplabv1.demo import QUICK, DemoSettings, evaluate_split, make_data, train_model, tune_crf
    from deeplabv1.io import atomic_write_json, atomic_write_text
    from deeplabv1.train.crf_finetune import CRFStageSettings, finetune_crf

    s = dataclasses.replace(QUICK if quick else DemoSettings(), seed=seed)
    timing, t = {}, time.perf_counter()

    def lap(name):
        nonlocal t
        timing[name] = round(time.perf_counter() - t, 1)
        print(f"[crf_e2e] {name}: {timing[name]} s", flush=True)
        t = time.perf_counter()

    out.mkdir(parents=True, exist_ok=True)
    stage = CRFStageSettings(crf_max_iter=stage2_iters, crf_lr=crf_lr, crf_base_lr=base_lr)
    init, e2e = out / "train" / "stage1_grid_crf.pt", out / "train" / "crf" / "final.pt"
    grid_path = out / "grid_crf.json"
    if reuse and e2e.is_file() and grid_path.is_file():  # only re-evaluate
        root, grid = out / "data", json.loads(grid_path.read_text())
    else:
        root = make_data(out, s)
        weights = train_model(root, out, s, progress=False)
        lap("stage1")
        evaluate_split(weights, root, "tune", out / "tune", s, save_scores=str(out / "scores"))
        best = tune_crf(out / "scores", root, out / "crf_search", s)
        grid = {k: float(best[k]) for k in ("w1", "sa", "sb", "w2", "sg")}
        atomic_write_json(grid_path, grid)
        lap("crf_search")
        cfg = dataclasses.replace(stage1_config(out), out_dir=str(out / "train"), progress=False)
        with_crf(weights, grid, init)
        finetune_crf(cfg, init, stage)
        lap("stage2")
    kw = dict(crf=True, trimap=True, trimap_max_width=s.trimap_max_width)
    base = evaluate_split(init, root, "val", out / "val_stage1", s, **kw)
    joint = evaluate_split(e2e, root, "val", out / "val_e2e", s, **kw)
    lap("eval")
    rows = [row("network (stage 1)", base, "network"),
            row("network + grid-searched CRF", base, "crf"),
            row("network after joint stage, no CRF", joint, "network"),
            row("network + end-to-end CRF", joint, "crf")]  # fmt: skip
    result = {
        "settings": dataclasses.asdict(s),
        "stage2": dataclasses.asdict(stage),
        "grid_crf": grid,
        "learned_crf": joint["crf_params"],
        "rows": rows,
        "timing": timing,
        "checkpoints": {"stage1": str(init), "end_to_end": str(e2e)},
    }
    atomic_write_json(out / "crf_end_to_end.json", result)
    atomic_write_text(out / "table.md", table_markdown(rows))
    return result


def seeds_markdown(results: dict[int, dict]) -> tuple[str, dict]:
    """Mean ± sd (min-max) over seeds of each row's mean IoU and trimap w=1."""
    from deeplabv1.demo import format_spread, spread

    first = next(iter(results.values()))["rows"]
    summary = {}
    lines = [f"| method ({len(results)} seeds) | mean IoU % | trimap w=1 % |", "|---|---|---|"]
    for i, row in enumerate(first):
        per = [r["rows"][i] for r in results.values()]
        fig = {"mean_iou": spread([p["mean_iou"] for p in per]),
               "trimap_w1": spread([p["trimap"][1] for p in per])}  # fmt: skip
        summary[row["method"]] = fig
        lines.append(f"| {row['method']} | {format_spread(fig['mean_iou'])} | "
                     f"{format_spread(fig['trimap_w1'])} |")  # fmt: skip
    return "\n".join(lines) + "\n", summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/crf_e2e"))
    p.add_argument("--quick", action="store_true", help="the miniature demo settings")
    p.add_argument("--stage2-iters", type=int, default=100)
    p.add_argument("--crf-lr", type=float, default=1e-2)
    p.add_argument("--base-lr", type=float, default=1e-4)
    p.add_argument("--reuse", action="store_true", help="only re-evaluate a finished run in --out")
    p.add_argument("--threads", type=int, default=1, help="torch and CRF threads (0 = defaults)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and training")
    p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                   help="one run per seed into OUT/seed_<n>, then mean and spread")  # fmt: skip
    args = p.parse_args(argv)
    from deeplabv1.demo import reproducible
    from deeplabv1.io import atomic_write_json, atomic_write_text

    options = (args.quick, args.stage2_iters, args.crf_lr, args.base_lr, args.reuse)
    with reproducible(args.threads):
        if not args.seeds:
            result = run(args.out, *options, seed=args.seed)
            print(table_markdown(result["rows"]))
            print(json.dumps({"timing": result["timing"], "grid_crf": result["grid_crf"]}))
            return 0
        results = {}
        for seed in args.seeds:
            results[seed] = run(args.out / f"seed_{seed}", *options, seed=seed)
            print(f"[crf_e2e] seed {seed}:\n{table_markdown(results[seed]['rows'])}", flush=True)
    table, summary = seeds_markdown(results)
    atomic_write_json(args.out / "seeds.json", {"seeds": args.seeds, "rows": summary})
    atomic_write_text(args.out / "seeds.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
