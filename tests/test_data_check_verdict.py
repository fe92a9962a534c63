"""``data check`` says OK only when nothing is wrong, with exit statuses that tell problems (1)
from warnings (3); masks without images are reported with ``--split all``; a listed stem with
neither image nor mask is named as a missing image, by ``data check`` and by ``eval``'s reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deeplabv1.cli import main
from deeplabv1.data.check import check_dataset
from deeplabv1.data.datasets import open_dataset
from deeplabv1.errors import DeepLabError


def _folder(root: Path, masks: dict[str, np.ndarray]) -> Path:
    """images/<stem>.png + masks/<stem>.png (8-bit grey class indices)."""
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for stem, mask in masks.items():
        Image.fromarray(np.zeros((*mask.shape, 3), np.uint8)).save(root / "images" / f"{stem}.png")
        Image.fromarray(mask.astype(np.uint8), mode="L").save(root / "masks" / f"{stem}.png")
    return root


def _mask(*values: int) -> np.ndarray:
    """An 8x8 mask holding ``values`` in equal horizontal bands."""
    return np.repeat(np.array(values, np.uint8), -(-8 // len(values)))[:8, None].repeat(8, 1)


def _check(capsys, root: Path, *args: str) -> tuple[int, str]:
    status = main(["data", "check", "--root", str(root), "--num-classes", "3", *args])
    return status, capsys.readouterr().out


def test_ok_only_without_problems_and_warnings(tmp_path, capsys):
    root = _folder(tmp_path / "d", {"a": _mask(0, 1), "b": _mask(0, 2)})
    status, out = _check(capsys, root, "--split", "all")
    assert status == 0 and out.splitlines()[-1].startswith("  OK; label pixels per value: ")

    # a class never present: warnings only -> exit 3, no "OK"
    Image.fromarray(_mask(0, 1)).save(root / "masks" / "b.png")
    status, out = _check(capsys, root, "--split", "all")
    assert status == 3 and "OK" not in out
    assert "  warning: class(es) never present in the masks of split 'all': 2 (class2)" in out
    assert out.splitlines()[-1].startswith("  no problems, 1 warning; label pixels per value: ")

    # and a problem: exit 1
    Image.fromarray(_mask(0, 7)).save(root / "masks" / "a.png")
    status, out = _check(capsys, root, "--split", "all")
    assert status == 1 and "OK" not in out and "  1 label values >= num_classes:" in out
    assert out.splitlines()[-1] == "  1 problem, 1 warning"
    assert check_dataset(root, "all", num_classes=3).exit_status == 1


def test_a_mask_without_an_image_is_a_problem_of_split_all(tmp_path, capsys):
    root = _folder(tmp_path / "d", {"a": _mask(0, 1, 2), "b": _mask(0, 1, 2)})
    Image.fromarray(_mask(0, 1, 2)).save(root / "masks" / "ghost.png")
    (root / "masks" / ".hidden.png").write_bytes(b"")  # not a mask: ignored
    status, out = _check(capsys, root, "--split", "all")
    assert status == 1 and "OK" not in out
    assert "  1 masks without images:\n" in out
    ghost = f"    {root}/masks/ghost.png: no image ghost.jpg, .jpeg or .png in {root}/images\n"
    assert ghost in out
    res = check_dataset(root, "all", num_classes=3)
    assert res.problems["masks without images"] and res.num_images == 2
    # a split list names what it uses: other masks are none of its business
    (root / "val.txt").write_text("a\nb\n")
    status, out = _check(capsys, root, "--split", "val")
    assert status == 0 and "ghost" not in out


def test_a_listed_stem_without_image_or_mask_is_a_missing_image(tmp_path, capsys):
    root = _folder(tmp_path / "d", {"a": _mask(0, 1, 2), "b": _mask(0, 1, 2)})
    (root / "val.txt").write_text("a\nghost\n")
    with pytest.raises(DeepLabError) as err:
        open_dataset(root, "val", num_classes=3)
    assert str(err.value) == f"{root}/images: 1 id(s) listed in split 'val' have no image (ghost)"
    status, out = _check(capsys, root, "--split", "val")
    assert status == 1 and "  1 missing images:\n" in out and "missing labels" not in out
    # an image without its mask is still named as such
    (root / "masks" / "b.png").unlink()
    (root / "val.txt").write_text("a\nb\n")
    with pytest.raises(DeepLabError, match=r"masks: 1 image\(s\) of split 'val' have no mask "
                                           r"\(b\.png\)$"):  # fmt: skip
        open_dataset(root, "val", num_classes=3)
