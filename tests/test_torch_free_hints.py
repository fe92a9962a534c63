"""Without torch, what needs it names the extra that installs it in one line (torch hidden by
a stand-in package that raises the ModuleNotFoundError of a missing module)."""

from __future__ import annotations

import os
import subprocess
import sys

_MISSING_TORCH = 'raise ModuleNotFoundError("No module named \'torch\'", name="torch")\n'


def _run(tmp_path, args):
    block = tmp_path / "block" / "torch"
    block.mkdir(parents=True, exist_ok=True)
    (block / "__init__.py").write_text(_MISSING_TORCH)
    path = os.pathsep.join([str(block.parent), os.environ.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, *args], env=dict(os.environ, PYTHONPATH=path),
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip


def test_demo_names_the_torch_extra(tmp_path):
    run = _run(tmp_path, ["-m", "deeplabv1.demo", "--quick", "--out", str(tmp_path / "d")])
    assert run.returncode == 2
    assert "Traceback" not in run.stderr, run.stderr[-800:]
    assert run.stderr.strip().splitlines()[-1].endswith('pip install "deeplabv1[torch]"')


def test_models_import_names_the_torch_extra(tmp_path):
    run = _run(tmp_path, ["-c", "import deeplabv1.models"])
    assert run.returncode == 1
    assert 'deeplabv1.models needs PyTorch, which is not installed: pip install "deeplabv1' in (
        run.stderr
    )
