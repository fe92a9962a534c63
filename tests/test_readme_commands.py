"""The README's shell blocks run as written, in order, in one folder, on small synthetic files.

Every ```bash block of README.md is either run or skipped here with a reason. The inputs the
README assumes (VGG16 and Caffe weights, the VOC and SBD archives, images and score maps) are
written first, in their real formats and under the README's names but tiny. Where a command
would take hours or need the network, ``SUBSTITUTIONS`` appends the fewest flags that make it
small; each original text must still appear in the README exactly once, so edits to the
README's commands are caught here.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_convert_caffe import _caffe_layers
from test_convert_caffe_proto import encode_net
from test_convert_torchvision import TorchvisionLayoutVGG16

from deeplabv1.data.download import ARCHIVES, file_md5
from deeplabv1.data.palette import read_label_png
from deeplabv1.data.sbd import write_sbd_mat
from deeplabv1.data.synth import make_synthetic_folder, make_synthetic_voc
from deeplabv1.models import build_model

README = Path(__file__).resolve().parents[1] / "README.md"
WIDTH = 0.0625  # every network here: 1/16 of the channels

# blocks not run here, by a text that identifies each, with the reason
SKIPPED = {
    "make test   #": "make test would run this suite again; test_eval_demo runs the demo",
    "TORCH_INDEX=": "needs the network (PyTorch's wheel index)",
    "torchrun --standalone": "several GPUs / machines (DDP itself: test_train_ddp.py)",
}

# README text -> what runs instead: the original plus the fewest flags that make it small
SUBSTITUTIONS = {
    # no network here: the archives come from a local mirror with their own checksums
    "deeplabv1 data download --root data/": (
        "deeplabv1 data download --root data/ --source mirror "
        "--voc2012-md5 {voc2012_md5} --sbd-md5 {sbd_md5}"
    ),
    # 6,000 iterations of full-width DeepLab-LargeFOV at batch 20 -> 2 tiny iterations
    "--data-root data/VOCdevkit/VOC2012 --init init.pt\n": (
        "--data-root data/VOCdevkit/VOC2012 --init init.pt"
        f" --width {WIDTH} --max-iter 2 --batch-size 2 --crop-size 65 --workers 0\n"
    ),
    # your own data: the same 2 tiny iterations, from the tiny init.pt
    "--init init.pt --out-dir runs/mine\n": (
        f"--init init.pt --out-dir runs/mine --width {WIDTH} --max-iter 2 --batch-size 2"
        " --crop-size 33 --workers 0\n"
    ),
}


def shell_blocks(text: str) -> list[str]:
    """The ```bash blocks, list-indented ones included, dedented."""
    found = re.findall(r"^( *)```bash\n(.*?)^\1```", text, flags=re.S | re.M)
    return [textwrap.dedent(body) for _, body in found]


def _jpeg(path: Path, rng: np.random.Generator, size=(48, 40)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, quality=95)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_archives(tmp: Path, mirror: Path) -> dict[str, str]:
    """The VOC2012 and SBD archives (real member layout) of a small synthetic dataset."""
    voc = make_synthetic_voc(tmp / "synth", 12, size=(64, 48), num_classes=21, seed=3)
    ids = (voc / "ImageSets" / "Segmentation" / "trainval.txt").read_text().split()
    mirror.mkdir()
    with tarfile.open(mirror / ARCHIVES["voc2012"].filename, "w") as tar:
        for path in sorted(voc.rglob("*")):
            if path.is_file() and path.suffix in (".jpg", ".png", ".txt"):
                tar.add(path, f"VOCdevkit/VOC2012/{path.relative_to(voc).as_posix()}")
    with tarfile.open(mirror / ARCHIVES["sbd"].filename, "w:gz") as tar:
        for sid in ids:
            labels = read_label_png(voc / "SegmentationClass" / f"{sid}.png")
            mat = tmp / f"{sid}.mat"
            write_sbd_mat(mat, np.where(labels == 255, 0, labels).astype(np.uint8))
            _add(tar, f"benchmark_RELEASE/dataset/cls/{sid}.mat", mat.read_bytes())
            _add(tar, f"benchmark_RELEASE/dataset/img/{sid}.jpg",
                 (voc / "JPEGImages" / f"{sid}.jpg").read_bytes())  # fmt: skip
        _add(tar, "benchmark_RELEASE/dataset/train.txt", "\n".join(ids[:6]).encode() + b"\n")
        _add(tar, "benchmark_RELEASE/dataset/val.txt", "\n".join(ids[6:8]).encode() + b"\n")
    return {f"{name}_md5": file_md5(mirror / arc.filename) for name, arc in ARCHIVES.items()}


def write_inputs(work: Path) -> dict[str, str]:
    """Every file the README's commands read before they write their own."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    torch.save(TorchvisionLayoutVGG16(WIDTH).state_dict(), work / "vgg16-397923af.pth")
    trained = build_model("deeplab-largefov", num_classes=21, width=WIDTH)
    layers = _caffe_layers(trained, names={"fc8": "fc8_voc12"})
    (work / "train2_iter_8000.caffemodel").write_bytes(encode_net(layers))
    _jpeg(work / "img.jpg", rng)
    np.save(work / "scores.npy", rng.normal(size=(21, 40, 48)).astype(np.float32))
    for name in ("a", "b"):
        _jpeg(work / "imgs" / f"{name}.jpg", rng)
        (work / "npys").mkdir(exist_ok=True)
        np.save(work / "npys" / f"{name}.npy", rng.normal(size=(21, 40, 48)).astype(np.float32))
        (work / "labels").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 21, (40, 48), dtype=np.uint8)).save(
            work / "labels" / f"{name}.png")  # fmt: skip
        _jpeg(work / "photos" / f"{name}.jpg", rng, size=(56, 44))
    names = ["background", "cat", "dog", "heron", "fish"]
    make_synthetic_folder(work / "mydata", 10, size=(48, 40), seed=4, classes=names)
    return write_archives(work / "tmp", work / "mirror")


def test_substitutions_and_skips_match_the_readme():
    text = README.read_text()
    for original in [*SUBSTITUTIONS, *SKIPPED]:
        assert text.count(original) == 1, f"README no longer has exactly one {original!r}"
    blocks = shell_blocks(text)
    assert len(blocks) >= 6
    for key in SKIPPED:
        assert sum(key in b for b in blocks) == 1, key


@pytest.mark.slow
def test_readme_shell_blocks_run_in_order(tmp_path):
    pytest.importorskip("onnxruntime", reason="the README's export --check needs onnxruntime")
    work = tmp_path / "work"
    work.mkdir()
    values = write_inputs(work)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    ran = 0
    for block in shell_blocks(README.read_text()):
        if any(key in block for key in SKIPPED):
            continue
        for original, replacement in SUBSTITUTIONS.items():
            block = block.replace(original, replacement.format(**values))
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=work, env=env,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
        assert run.returncode == 0, f"{block}\n--- stdout\n{run.stdout[-3000:]}\n--- stderr\n" \
                                    f"{run.stderr[-3000:]}"  # fmt: skip
        ran += 1
    assert ran >= 4
    # what the chain was meant to produce
    made = ["init.pt", "model.pt", "labels.png", "out/a.png", "data/VOCdevkit/VOC2012",
            "runs/voc_largefov_stage1/final.pt", "eval/results.json", "crf_search/best.json",
            "predictions/a_figure.png", "model.onnx", "curves.png", "runs/mine/final.pt",
            "runs/mine_eval/results.json", "out/a_net.png"]  # fmt: skip
    assert [p for p in made if not (work / p).exists()] == []
