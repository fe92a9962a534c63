"""The paper's published mean IoU, side by side with ``deeplabv1 eval`` results.

``PAPER_MEAN_IOU[split][method]``: PASCAL VOC 2012 mean IoU (%) of Chen et al. (ICLR 2015),
Table 1 (``val``: trained on train_aug; ``test``: trained on trainval_aug, scored by the
evaluation server) and Table 2 (``val``, after the CRF, with the field-of-view variants).
Method names are the paper's (``deeplabv1.evaluate.report.method_name``).
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
    if not isinstance(results, dict) or not isinstance(results.get("methods"), dict):
        raise DeepLabError(f"{path}: not a results.json written by `deeplabv1 eval`")
    return results


def comparison_rows(results: dict, source: str = "") -> list[dict]:
    """One row per evaluated method: paper name, split, images, ours, paper, difference."""
    arch = (results.get("model") or {}).get("arch")
    split = (results.get("data") or {}).get("split", "?")
    rows = []
    for method, summary in results["methods"].items():
        name = method_name(arch, method == "crf")
        ours = summary.get("mean_iou")
        paper = PAPER_MEAN_IOU.get(split, {}).get(name)
        diff = None if ours is None or paper is None else round(ours - paper, 2)
        rows.append(
            {
                "method": name,
                "split": split,
                "images": results.get("num_images"),
                "ours": ours,
                "paper": paper,
                "difference": diff,
                "source": source,
            }
        )
    return rows


def paper_table(paths: list[str | os.PathLike]) -> str:
    """The Markdown table of every results file in ``paths`` against the paper."""
    if not paths:
        raise DeepLabError("paper-table: give at least one results.json")
    rows = [row for p in paths for row in comparison_rows(read_results(p), str(p))]

    def fmt(value, signed=False):
        return "-" if value is None else (f"{value:+.2f}" if signed else f"{value:.2f}")

    lines = [
        "| Method | split | images | mean IoU (ours) | mean IoU (paper) | difference | results |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['split']} | {r['images']} | {fmt(r['ours'])} | "
            f"{fmt(r['paper'])} | {fmt(r['difference'], True)} | {r['source']} |"
        )
    notes = []
    if any(r["split"] == "val" and r["images"] != VOC_VAL_IMAGES for r in rows):
        notes.append(f"The paper's val numbers are over all {VOC_VAL_IMAGES} val images.")
    if any(r["paper"] is None for r in rows):
        notes.append("'-': the paper has no number for that method and split.")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"
