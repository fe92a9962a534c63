"""Evaluation and CRF-search reports: JSON for programs, Markdown tables in the paper's format.

Method names follow the paper: the network is "DeepLab-LargeFOV", with the CRF
"DeepLab-CRF-LargeFOV" (the CRF goes after "DeepLab" or "DeepLab-MSc"). The per-class table uses
the paper's column abbreviations (its Table 3). All values are percentages.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from deeplabv1.io import atomic_write_json, atomic_write_text

RESULTS_FORMAT = "deeplabv1-eval"
RESULTS_VERSION = 1
TRIMAP_COLUMNS = (1, 2, 3, 5, 10, 20, 30, 40)
CLASS_ABBREV = {
    "background": "bkg", "aeroplane": "aero", "bicycle": "bike", "motorbike": "mbike",
    "diningtable": "table", "pottedplant": "plant", "tvmonitor": "tv",
}  # fmt: skip


def method_name(arch: str | None, crf: bool) -> str:
    """Paper-style name: ("deeplab-msc-largefov", True) -> "DeepLab-MSc-CRF-LargeFOV"."""
    words = {"deeplab": "DeepLab", "msc": "MSc", "largefov": "LargeFOV"}
    parts = [words.get(p, p) for p in (arch or "deeplab").split("-")]
    if crf:
        parts.insert(2 if len(parts) > 1 and parts[1] == "MSc" else 1, "CRF")
    return "-".join(parts)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def results_markdown(results: dict) -> str:
    """The Markdown report of one ``deeplabv1 eval`` results dict."""
    arch = results.get("model", {}).get("arch")
    methods = results["methods"]
    names = {m: method_name(arch, m == "crf") for m in methods}
    data = results.get("data", {})
    lines = [f"# Evaluation: {data.get('split', '?')} ({results['num_images']} images)", ""]
    if results.get("crf_params"):
        p = results["crf_params"]
        lines += [f"CRF: w1 = {p['w1']:g}, sa = {p['sa']:g}, sb = {p['sb']:g}; "
                  f"w2 = {p['w2']:g}, sg = {p['sg']:g}; {results.get('crf_iters', 10)} "
                  "mean-field iterations.", ""]  # fmt: skip
    rows = [[names[m], _fmt(r["mean_iou"]), _fmt(r["pixel_accuracy"])] for m, r in methods.items()]
    lines += _table(["Method", "mean IoU (%)", "pixel accuracy (%)"], rows) + [""]
    classes = list(next(iter(methods.values()))["per_class_iou"]) if methods else []
    header = ["Method"] + [CLASS_ABBREV.get(c, c) for c in classes] + ["mean"]
    rows = [
        [names[m]] + [_fmt(r["per_class_iou"][c]) for c in classes] + [_fmt(r["mean_iou"])]
        for m, r in methods.items()
    ]
    lines += ["## IoU per class (%)", ""] + _table(header, rows) + [""]
    tri = results.get("trimap")
    if tri:
        widths = tri["widths"]
        cols = [w for w in TRIMAP_COLUMNS if w in widths]
        rows = [[names[m]] + [_fmt(tri[m][widths.index(w)]) for w in cols] for m in methods]
        lines += ["## Trimap: mean IoU (%) within w pixels of the void band", ""]
        lines += _table(["Method"] + [f"w={w}" for w in cols], rows) + [""]
    return "\n".join(lines)


def write_results(out_dir: str | os.PathLike, results: dict) -> dict[str, Path]:
    """Write ``results.json`` and ``results.md`` into ``out_dir`` atomically; return paths."""
    out = Path(out_dir)
    results = {"format": RESULTS_FORMAT, "format_version": RESULTS_VERSION, **results}
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "results.md", results_markdown(results))
    return {"json": out / "results.json", "markdown": out / "results.md"}


def trimap_curves(results: dict) -> dict[str, tuple[list[int], list[float]]]:
    """{paper-style method name: (widths, mIoU %)} for ``deeplabv1.viz.plots.plot_trimap``."""
    tri = results["trimap"]
    arch = results.get("model", {}).get("arch")
    curves = {}
    for m in results["methods"]:
        pairs = [(w, v) for w, v in zip(tri["widths"], tri[m]) if v is not None]
        curves[method_name(arch, m == "crf")] = ([w for w, _ in pairs], [v for _, v in pairs])
    return curves


def search_markdown(search: dict, top: int = 15) -> str:
    """Markdown table of the best ``top`` CRF-search points plus the best parameters."""
    recs = sorted(search["records"], key=lambda r: -r["mean_iou"])[:top]
    rows = [[f"{r['w1']:g}", f"{r['sa']:g}", f"{r['sb']:g}", f"{r['w2']:g}", f"{r['sg']:g}",
             f"{r['mean_iou']:.2f}"] for r in recs]  # fmt: skip
    b = search["best"]
    setup = search["setup"]
    source = setup.get("split") or setup.get("images")  # a dataset split or an image folder
    lines = [f"# CRF search: {setup['num_images']} images of {source}, "
             f"{len(search['records'])} points", "",
             f"Best: w1 = {b['w1']:g}, sa = {b['sa']:g}, sb = {b['sb']:g}, w2 = {b['w2']:g}, "
             f"sg = {b['sg']:g}: mean IoU {b['mean_iou']:.2f}%", ""]  # fmt: skip
    if search.get("unary"):
        lines += [f"Without the CRF (arg-max of the scores): mean IoU "
                  f"{search['unary']['mean_iou']:.2f}%; gain of the best CRF: "
                  f"{search['gain']:+.2f} points.", ""]  # fmt: skip
    if search.get("skipped"):
        lines += [f"Left out (unreadable): {', '.join(search['skipped'])}.", ""]
    lines += _table(["w1", "sa", "sb", "w2", "sg", "mean IoU (%)"], rows) + [""]
    return "\n".join(lines)


def write_search(out_dir: str | os.PathLike, search: dict) -> dict[str, Path]:
    """Write ``best.json`` (best point, rounds, setup) and ``search.md`` atomically."""
    out = Path(out_dir)
    best = {k: v for k, v in search.items() if k != "records"}
    best["num_points"] = len(search["records"])
    atomic_write_json(out / "best.json", best)
    # names that are not UTF-8 (os.fsdecode's surrogates) shown with their bytes escaped
    text = search_markdown(search).encode("utf-8", "surrogateescape")
    atomic_write_text(out / "search.md", text.decode("utf-8", "backslashreplace"))
    return {"json": out / "best.json", "markdown": out / "search.md"}
