"""The paper's published mean IoU, side by side with ``deeplabv1 eval`` results.

``PAPER_MEAN_IOU[split][method]``: PASCAL VOC 2012 mean IoU (%) of Chen et al. (ICLR 2015),
Table 1 (``val``: trained on train_aug; ``test``: trained on trainval_aug, scored by the
evaluation server) and Table 2 (``val``, after the CRF, with the field-of-view variants).
Method names are the paper's (``deeplabv1.evaluate.report.method_name``).

Only like is set beside like: a result goes beside the paper's number when it is VOC 2012's 21
classes in the VOC layout, a full-width network run with the released test procedure (test size
513, the variant's released test network) and, for a CRF row, the paper's parameter set of the
variant with its 10 mean-field iterations and DeepLab's normalisation. Any other result is listed
in a separate "not comparable" table that says why (``comparability``). The same network
evaluated in several folders (``eval/X`` and ``eval/X-crf``) is one row.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from deeplabv1.errors import DeepLabError
from deeplabv1.evaluate.report import method_name

PAPER_MEAN_IOU: dict[str, dict[str, float]] = {
    "val": {
        "DeepLab": 59.80,
        "DeepLab-CRF": 63.74,
        "DeepLab-MSc": 61.30,
        "DeepLab-MSc-CRF": 65.21,
        "DeepLab-7x7": 64.38,
        "DeepLab-CRF-7x7": 67.64,
        "DeepLab-4x4": 63.41,
        "DeepLab-CRF-4x4": 67.14,
        "DeepLab-LargeFOV": 62.25,
        "DeepLab-CRF-LargeFOV": 67.64,
        "DeepLab-MSc-LargeFOV": 64.21,
        "DeepLab-MSc-CRF-LargeFOV": 68.70,
    },
    "test": {
        "DeepLab-CRF": 66.4,
        "DeepLab-MSc-CRF": 67.1,
        "DeepLab-CRF-7x7": 70.3,
        "DeepLab-CRF-LargeFOV": 70.3,
        "DeepLab-MSc-CRF-LargeFOV": 71.6,
    },
}
VOC_VAL_IMAGES = 1449
PAPER_TEST_SIZE = 513
PAPER_CRF_ITERS = 10
PAPER_CRF_NORMALIZATION = "after"
PARAM_NAMES = ("w1", "sa", "sb", "w2", "sg")


def read_results(path: str | os.PathLike) -> dict:
    """A ``results.json`` of ``deeplabv1 eval`` (a folder holding one is accepted too)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise DeepLabError(f"{path}: results file not found") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DeepLabError(f"{path}: not a readable results.json ({exc})") from exc
    except UnicodeDecodeError:
        raise DeepLabError(f"{path}: not a readable results.json (not UTF-8 text)") from None
    if not isinstance(results, dict) or not isinstance(results.get("methods"), dict):
        raise DeepLabError(f"{path}: not a results.json written by `deeplabv1 eval`")
    return results


def _fraction(width: float) -> str:
    inverse = 1 / width if width else 0
    whole = inverse > 1 and abs(inverse - round(inverse)) < 1e-6
    return f"1/{round(inverse)}" if whole else f"{width:g}"


def _values(params: dict) -> str:
    return (f"w1 {params['w1']:g}, sa {params['sa']:g}, sb {params['sb']:g}; "
            f"w2 {params['w2']:g}, sg {params['sg']:g}")  # fmt: skip


def crf_set(params: dict | None, arch: str | None) -> tuple[str, bool]:
    """(how the CRF parameter set is named in the table, whether it is the paper's set of
    ``arch``). A set is named by its registry name when its values are a named set's."""
    from deeplabv1.crf.params import DEEPLAB_CRF_PARAMS, PUBLISHED_VARIANTS, RELEASE_CRF_PARAMS

    if not params:
        return "not recorded", False
    values = {k: params.get(k) for k in PARAM_NAMES}
    paper = DEEPLAB_CRF_PARAMS.get(arch or "") if arch in PUBLISHED_VARIANTS else None
    if paper is not None and paper.to_dict() == values:
        return f"{arch} (paper): {_values(values)}", True
    names = [n for n, p in RELEASE_CRF_PARAMS.items() if p.to_dict() == values]
    names += [n for n in PUBLISHED_VARIANTS if DEEPLAB_CRF_PARAMS[n].to_dict() == values]
    return (f"{names[0]}: " if names else "") + _values(values), False


def _test_size(results: dict) -> int | None:
    """The test size the network ran at: the score folder's for ``eval --scores``."""
    model = results.get("model") or {}
    where = model if "scores" in model else results.get("config") or {}
    return where.get("test_size")


def comparability(results: dict, method: str) -> list[str]:
    """Why ``method`` of these results is not like the paper's (empty: comparable)."""
    from deeplabv1.data.palette import VOC_CLASSES

    model = results.get("model") or {}
    data = results.get("data") or {}
    arch = model.get("arch")
    split = data.get("split")
    reasons = []
    if split not in PAPER_MEAN_IOU:
        reasons.append(f"split {split!r} (the paper reports VOC 2012 val and test)")
    names = model.get("class_names")
    if model.get("num_classes") != len(VOC_CLASSES):
        reasons.append(f"{model.get('num_classes')} classes (the paper: VOC 2012's 21)")
    elif names is not None and tuple(names) != VOC_CLASSES:
        reasons.append("other class names than VOC 2012's")
    if data.get("layout", "voc") != "voc":
        reasons.append("a plain image folder, not the VOC 2012 layout")
    width = model.get("width")
    if width != 1.0:
        reasons.append(f"width {_fraction(width) if width else 'unknown'} (the paper's networks "
                       "are full width)")  # fmt: skip
    test_size = _test_size(results)
    if test_size != PAPER_TEST_SIZE:
        shown = "not recorded" if test_size is None else test_size or "minimal padding"
        reasons.append(f"test size {shown} (the paper: {PAPER_TEST_SIZE})")
    test_network = model.get("test_network")
    if test_network != "release":
        reasons.append("test network not recorded" if test_network is None else
                       f"test network {test_network} (not the variant's released one)")  # fmt: skip
    if method == "crf":
        label, paper_set = crf_set(results.get("crf_params"), arch)
        if not paper_set:
            reasons.append(f"CRF parameters {label.split(':')[0]}, not the paper's set of "
                           f"{method_name(arch, False)}")  # fmt: skip
        iters = results.get("crf_iters")
        if iters != PAPER_CRF_ITERS:
            reasons.append(f"{iters} mean-field iterations (the paper: {PAPER_CRF_ITERS})")
        normalization = results.get("crf_normalization")
        if normalization != PAPER_CRF_NORMALIZATION:
            reasons.append(f"CRF normalisation {normalization!r} (DeepLab's: "
                           f"{PAPER_CRF_NORMALIZATION!r})")  # fmt: skip
    return reasons


def comparison_rows(results: dict, source: str = "") -> list[dict]:
    """One row per evaluated method: paper name, split, images, ours, paper, difference, the
    CRF parameter set (CRF rows), the reasons it is not comparable (empty if it is) and the
    identity of the evaluated network (``network``: weights digest or path, data, settings)."""
    model = results.get("model") or {}
    data = results.get("data") or {}
    arch = model.get("arch")
    split = data.get("split", "?")
    network = (model.get("weights_sha256") or model.get("weights") or model.get("scores"),
               data.get("root"), data.get("val_fraction"), model.get("test_network"),
               _test_size(results))  # fmt: skip
    rows = []
    for method, summary in results["methods"].items():
        name = method_name(arch, method == "crf")
        ours = summary.get("mean_iou")
        reasons = comparability(results, method)
        paper = None if reasons else PAPER_MEAN_IOU.get(split, {}).get(name)
        diff = None if ours is None or paper is None else round(ours - paper, 2)
        crf = crf_set(results.get("crf_params"), arch)[0] if method == "crf" else None
        rows.append(
            {
                "method": name,
                "split": split,
                "images": results.get("num_images"),
                "ours": ours,
                "paper": paper,
                "difference": diff,
                "crf_params": crf,
                "not_comparable": reasons,
                "source": source,
                "network": network if network[0] is not None else None,
            }
        )
    return rows


def merge_duplicates(rows: list[dict]) -> list[dict]:
    """One row per network and method: the same weights on the same data with the same
    settings and result (``eval/X`` and the network row of ``eval/X-crf``) are listed once,
    naming every results file."""
    out: list[dict] = []
    seen: dict[tuple, dict] = {}
    for row in rows:
        key = None
        if row["network"] is not None:
            key = (row["network"], row["method"], row["split"], row["images"], row["ours"],
                   row["crf_params"], tuple(row["not_comparable"]))  # fmt: skip
        if key is not None and key in seen:
            seen[key]["source"] += f", {row['source']}"
            continue
        row = dict(row)
        out.append(row)
        if key is not None:
            seen[key] = row
    return out


def paper_table(paths: list[str | os.PathLike]) -> str:
    """The Markdown tables of every results file in ``paths``: the comparable results beside
    the paper's numbers, then the others with the reason they are not comparable."""
    if not paths:
        raise DeepLabError("paper-table: give at least one results.json")
    rows = merge_duplicates([row for p in paths
                             for row in comparison_rows(read_results(p), str(p))])  # fmt: skip

    def fmt(value, signed=False):
        return "-" if value is None else (f"{value:+.2f}" if signed else f"{value:.2f}")

    like = [r for r in rows if not r["not_comparable"]]
    other = [r for r in rows if r["not_comparable"]]
    lines = []
    if like:
        lines += [
            "| Method | split | images | mean IoU (ours) | mean IoU (paper) | difference | "
            "CRF parameters | results |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['method']} | {r['split']} | {r['images']} | {fmt(r['ours'])} | "
            f"{fmt(r['paper'])} | {fmt(r['difference'], True)} | {r['crf_params'] or '-'} | "
            f"{r['source']} |"
            for r in like
        ]
    else:
        lines.append("No result is comparable with the paper's numbers.")
    if other:
        lines += [
            "",
            "Not comparable with the paper (not set beside its numbers):",
            "",
            "| Method | split | images | mean IoU (ours) | CRF parameters | not comparable: | "
            "results |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['method']} | {r['split']} | {r['images']} | {fmt(r['ours'])} | "
            f"{r['crf_params'] or '-'} | {'; '.join(r['not_comparable'])} | {r['source']} |"
            for r in other
        ]
    notes = []
    if any(r["split"] == "val" and r["images"] != VOC_VAL_IMAGES for r in like):
        notes.append(f"The paper's val numbers are over all {VOC_VAL_IMAGES} val images.")
    if any(r["paper"] is None for r in like):
        notes.append("'-': the paper has no number for that method and split.")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"
