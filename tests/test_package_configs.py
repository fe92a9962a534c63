"""The paper's configs ship inside the package and load by name as well as by path."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deeplabv1.config import (
    add_config_args,
    config_from_dict,
    load_yaml,
    locate_config,
    packaged_configs,
    resolve_config,
)
from deeplabv1.errors import DeepLabError
from deeplabv1.train.config import TrainConfig

PACKAGE_CONFIGS = Path(__file__).resolve().parents[1] / "src" / "deeplabv1" / "configs"


def test_every_packaged_file_has_a_name():
    files = sorted(PACKAGE_CONFIGS.glob("*.yaml"))
    assert len(files) >= 5
    shipped = packaged_configs()
    assert sorted(shipped) == sorted(f.stem.replace("_", "-") for f in files)
    for f in files:
        assert Path(str(shipped[f.stem.replace("_", "-")])) == f


@pytest.mark.parametrize("name", ["voc-largefov-stage1", "voc_largefov_stage1",
                                  "voc_largefov_stage1.yaml"])  # fmt: skip
def test_names_load_the_packaged_file(name):
    want = yaml.safe_load((PACKAGE_CONFIGS / "voc_largefov_stage1.yaml").read_text())
    assert load_yaml(name) == want
    cfg = config_from_dict(TrainConfig, load_yaml(name))
    assert (cfg.arch, cfg.split, cfg.out_dir) == (
        "deeplab-largefov",
        "train_aug",
        "runs/voc_largefov_stage1",
    )


def test_a_path_wins_over_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("voc-largefov-stage1").write_text("max_iter: 7\n")
    assert load_yaml("voc-largefov-stage1") == {"max_iter": 7}
    (tmp_path / "mine.yaml").write_text("max_iter: 9\n")
    assert load_yaml(tmp_path / "mine.yaml") == {"max_iter": 9}


def test_unknown_name_lists_the_packaged_configs():
    with pytest.raises(DeepLabError, match="nope: config file not found") as err:
        locate_config("nope")
    assert "voc-largefov-stage1" in str(err.value)
    # the path of a clone's old layout: not read silently, but pointed at the name
    with pytest.raises(DeepLabError, match="did you mean --config voc-largefov-stage1"):
        locate_config("configs/voc_largefov_stage1.yaml")


def test_flags_override_a_named_config():
    parser = argparse.ArgumentParser()
    add_config_args(parser, TrainConfig)
    args = parser.parse_args(["--config", "voc-largefov-stage1", "--max-iter", "10"])
    cfg = resolve_config(TrainConfig, args)
    assert (cfg.max_iter, cfg.step_size, cfg.arch) == (10, 2000, "deeplab-largefov")


def test_stage2_init_is_where_stage1_writes():
    stage1 = config_from_dict(TrainConfig, load_yaml("voc-largefov-stage1"))
    stage2 = config_from_dict(TrainConfig, load_yaml("voc-largefov-stage2-trainval"))
    assert stage2.init == f"{stage1.out_dir}/final.pt"


def test_list_configs_prints_every_name_and_what_it_is():
    run = subprocess.run([sys.executable, "-m", "deeplabv1", "train", "--list-configs"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    for name in packaged_configs():
        (line,) = [x for x in lines if x.split()[:1] == [name]]
        assert len(line.split()) > 3  # a summary follows the name
    assert str(PACKAGE_CONFIGS) in lines[-1]


def test_docs_and_configs_use_names_not_clone_paths():
    """`configs/...` paths only work in a clone of an old layout; every text uses the names."""
    repo = PACKAGE_CONFIGS.parents[2]
    texts = [repo / "README.md", *(repo / "docs").glob("*.md"), *PACKAGE_CONFIGS.glob("*.yaml")]
    stale = [f"{p.name}: {line.strip()}" for p in texts for line in p.read_text().splitlines()
             if re.search(r"(?<![\w/])configs/\w+\.yaml", line)]  # fmt: skip
    assert stale == []
    for name in re.findall(
        r"--config ([a-z0-9-]+)\b(?!\.)", "\n".join(t.read_text() for t in texts)
    ):
        locate_config(name)  # every name the docs use exists
