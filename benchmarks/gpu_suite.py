"""The first GPU window in one command: setup, the CUDA tests and every GPU figure, < 10 minutes.

    python3 benchmarks/gpu_suite.py                  # a fresh checkout on a GPU machine
    python3 benchmarks/gpu_suite.py --dry-run        # every step with tiny sizes on the CPU

Needs only a python3 >= 3.10 to start. Steps, in order of value, each a subprocess with its own
timeout inside an overall ``--budget`` (a failed or timed-out step is recorded and the next one
runs; nothing stops the suite):

1. ``setup``: the Makefile's environment: ``.venv`` (``python3 -m venv
   --system-site-packages``, so a torch already on the machine can serve), ``pip install
   torch==<the Makefile's TORCH_VERSION>`` and ``pip install -e .[test]``; skipped when
   ``.venv`` already imports torch and this checkout's deeplabv1. Where the installs fail (a
   machine without network) but a torch is there, the steps use it with this checkout on
   ``PYTHONPATH``: a warning, not the end.
2. ``env``: torch and CUDA versions, the GPUs.
3. ``cuda_tests``: ``pytest -m cuda`` (every test that needs a GPU).
4. ``crf_batch``: ``crf_batch_bench.py``: ms per 500x375 image, 21 labels, batches of 1 / 8 /
   32 on the GPU, labels compared with the CPU engine.
5. ``eval``: ``eval_scaling.py --device cuda``: ``eval --crf`` images per second (1 GPU, and
   1 vs 2 ranks when there are two GPUs).
6. ``train_fp32`` / ``train_bf16``: ``train_bench.py``: training images per second at 321x321,
   channels_last, float32 and bfloat16 autocast.
7. ``nccl``: ``torchrun --nproc-per-node 2 nccl_check.py`` (NCCL collectives and a DDP step),
   when there are two GPUs.

Writes one JSON file (``--out``, rewritten after every step): each step's status, seconds,
parsed figures or error and output tail, plus ``figures`` (the headline numbers) and
``failures``. Exit status 1 when any step failed. ``--dry-run`` runs every step on the CPU with
tiny sizes and the current interpreter (``tests/test_gpu_suite.py`` runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"


def torch_version() -> str:
    """The pinned torch version of the Makefile (TORCH_VERSION := x.y.z)."""
    match = re.search(r"^TORCH_VERSION\s*:=\s*(\S+)", (REPO / "Makefile").read_text(), re.M)
    if not match:
        raise RuntimeError("Makefile: no TORCH_VERSION := ... line")
    return match.group(1)


def last_json(text: str):
    """The last JSON object printed in ``text`` (benchmarks print one, maybe after logs)."""
    starts = [m.start() for m in re.finditer(r"^\{", text, re.M)]
    for start in reversed(starts):
        try:
            return json.loads(text[start:])
        except json.JSONDecodeError:
            continue
    return None


class Suite:
    """Runs steps within the budget and keeps the JSON report up to date."""

    def __init__(self, out: Path, budget: float, dry_run: bool, env: dict, only=None):
        self.out = out
        self.only = only  # names of the steps to run (None: all)
        self.deadline = time.monotonic() + budget
        self.env = env
        self.report = {"suite": "gpu_suite", "dry_run": dry_run,
                       "started": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": _commit(),
                       "steps": {}, "figures": {}, "failures": []}  # fmt: skip
        self.t0 = time.monotonic()

    def save(self) -> None:
        self.report["total_s"] = round(time.monotonic() - self.t0, 1)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_name(f".{self.out.name}.tmp")
        tmp.write_text(json.dumps(self.report, indent=2) + "\n")
        os.replace(tmp, self.out)

    def record(self, name: str, entry: dict) -> dict:
        self.report["steps"][name] = entry
        if entry["status"] == "failed":
            self.report["failures"].append(name)
        self.save()
        error = f": {entry['error'][:300]}" if entry.get("error") else ""
        print(f"gpu_suite: {name}: {entry['status']} ({entry.get('seconds', 0):.1f} s){error}",
              flush=True)  # fmt: skip
        return entry

    def skip(self, name: str, why: str) -> dict:
        return self.record(name, {"status": "skipped", "reason": why, "seconds": 0.0})

    def run(self, name: str, cmd: list[str], timeout: float, parse=last_json) -> dict:
        """Run ``cmd``; record ok (with ``parse(stdout)`` as ``result``) or failed."""
        if self.only is not None and name not in self.only:
            return self.skip(name, "not in --only")
        left = self.deadline - time.monotonic()
        if left < 15:
            return self.skip(name, "out of time (--budget)")
        timeout = min(timeout, left - 5)
        t0 = time.monotonic()
        entry: dict = {"command": " ".join(cmd), "timeout_s": round(timeout)}
        why = None
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=self.env, capture_output=True, text=True,
                                  timeout=timeout)  # fmt: skip
            out, err, rc = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as exc:
            out, err, rc = _text(exc.stdout), _text(exc.stderr), None
            why = f"timed out after {timeout:.0f} s"
        except OSError as exc:
            out, err, rc = "", "", None
            why = f"{type(exc).__name__}: {exc}"
        entry["seconds"] = round(time.monotonic() - t0, 2)
        entry["returncode"] = rc
        entry["output_tail"] = (out[-1500:] + "\n--- stderr ---\n" + err[-2500:]).strip()
        try:
            entry["result"] = parse(out)
        except Exception as exc:  # a parser must not stop the suite either
            entry["result"] = None
            entry["parse_error"] = f"{type(exc).__name__}: {exc}"
        if rc == 0:
            entry["status"] = "ok"
        else:
            entry["status"] = "failed"
            entry["error"] = why or (err.strip().splitlines() or [f"exit status {rc}"])[-1]
        return self.record(name, entry)


def _text(data) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=10).stdout.strip() or None  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None


def _imports_checkout(python: str, env: dict) -> bool:
    """True when ``python`` (with ``env``) imports torch and this checkout's deeplabv1."""
    code = "import torch, deeplabv1; print(deeplabv1.__file__)"
    try:
        found = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env,
                               timeout=120)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return False
    return found.returncode == 0 and str(REPO) in found.stdout


def setup(suite: Suite, python: str | None) -> str:
    """The interpreter of the steps: ``python``, or ``.venv``'s set up as the Makefile does.

    Where nothing can be installed (no network), a torch already on the machine serves:
    ``.venv`` sees the system's packages, and this checkout is put on ``PYTHONPATH``
    (recorded as a warning)."""
    if python:
        suite.skip("setup", f"--python {python}")
        return python
    venv_py = str(REPO / ".venv" / "bin" / "python")
    if _imports_checkout(venv_py, suite.env):
        suite.skip("setup", ".venv already has torch and this checkout's deeplabv1")
        return venv_py
    pip = ["-m", "pip", "install", "--quiet", "--retries", "1", "--timeout", "20"]
    steps = [
        [sys.executable, "-m", "venv", "--system-site-packages", str(REPO / ".venv")],
        [venv_py, *pip, f"torch=={torch_version()}"],
        [venv_py, *pip, "-e", ".[test]"],
    ]
    log, t0 = [], time.monotonic()
    for cmd in steps:
        try:
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
            log.append({"command": " ".join(cmd), "returncode": proc.returncode,
                        "stderr_tail": proc.stderr[-1500:]})  # fmt: skip
        except (OSError, subprocess.SubprocessError) as exc:
            log.append({"command": " ".join(cmd), "error": f"{type(exc).__name__}: {exc}"})
    failed = [s["command"] for s in log if s.get("returncode") != 0]
    src = {"PYTHONPATH": str(REPO / "src")}
    for py, extra in ((venv_py, {}), (venv_py, src), (sys.executable, src)):
        if _imports_checkout(py, {**suite.env, **extra}):
            suite.env.update(extra)
            how = f"{py}" + (" with PYTHONPATH=src" if extra else "")
            suite.record("setup", {
                "status": "ok", "seconds": round(time.monotonic() - t0, 1), "python": how,
                "commands": log, "warning": f"failed: {failed}; using {how}" if failed else None,
            })  # fmt: skip
            return py
    suite.record("setup", {
        "status": "failed", "seconds": round(time.monotonic() - t0, 1), "commands": log,
        "error": f"no interpreter imports torch and this checkout (failed: {failed})",
    })  # fmt: skip
    return venv_py


def pytest_counts(text: str) -> dict:
    """{"passed": n, "failed": n, "skipped": n, ...} from pytest's last summary line."""
    found = re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed)", text)
    return {kind: int(n) for n, kind in found}


def gpu_count(python: str, env: dict) -> int:
    code = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env,
                             timeout=120).stdout.strip()  # fmt: skip
        return int(out or 0)
    except (OSError, ValueError, subprocess.SubprocessError):
        return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="every step tiny, on the CPU")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "gpu_suite" / "gpu_suite.json")
    ap.add_argument("--budget", type=float, default=570.0, help="seconds for the whole suite")
    ap.add_argument("--python", help="interpreter of the steps (default: .venv, set up here; "
                    "--dry-run: this one)")  # fmt: skip
    ap.add_argument("--only", help="run only these steps (comma-separated names; setup runs "
                    "whenever the steps need it)")  # fmt: skip
    args = ap.parse_args()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""  # CPU even on a GPU machine
    only = set(args.only.split(",")) if args.only else None
    suite = Suite(args.out, args.budget, args.dry_run, env, only)
    if args.dry_run:
        suite.skip("setup", f"dry run; would install torch=={torch_version()} and -e .[test] "
                   "into .venv")  # fmt: skip
        py = args.python or sys.executable
    else:
        py = setup(suite, args.python)
    dev = "cpu" if args.dry_run else "cuda"
    env_code = ("import json, torch, platform; print(json.dumps({'torch': torch.__version__, "
                "'cuda': torch.version.cuda, 'cuda_available': torch.cuda.is_available(), "
                "'gpus': [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())"
                "], 'python': platform.python_version(), 'cpu_count': __import__('os')"
                ".cpu_count()}))")  # fmt: skip
    suite.run("env", [py, "-c", env_code], 120)
    gpus = 0 if args.dry_run else gpu_count(py, env)
    if not args.dry_run and gpus == 0:
        print("gpu_suite: no CUDA GPU visible; the GPU steps will fail", flush=True)
    tests = ["tests/test_eval_crf_runner.py"] if args.dry_run else ["tests"]
    suite.run("cuda_tests", [py, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider",
                             *tests], 240, parse=pytest_counts)  # fmt: skip
    tiny = args.dry_run
    crf = ["--size", "50", "38", "--labels", "4", "--batches", "1,2", "--repeats", "1"]
    suite.run("crf_batch", [py, str(BENCH / "crf_batch_bench.py"), "--device", dev,
                            *(crf if tiny else ["--batches", "1,8,32"])], 150)  # fmt: skip
    ev = (["--num-images", "3", "--size", "48", "40", "--test-size", "49", "--width", "0.0625",
           "--num-classes", "4", "--procs", "1", "--no-warmup"] if tiny else
          ["--num-images", "32", "--size", "500", "375", "--test-size", "513", "--width", "1",
           "--procs", "1,2" if gpus >= 2 else "1"])  # fmt: skip
    suite.run("eval", [py, str(BENCH / "eval_scaling.py"), "--device", dev, "--repeats", "1",
                       *ev], 180)  # fmt: skip
    train = (["--width", "0.0625", "--crop", "65", "--batch", "1", "--iters", "1",
              "--warmup", "0", "--matmul-size", "128"] if tiny else
             ["--crop", "321", "--batch", "10", "--iters", "10", "--warmup", "3"])  # fmt: skip
    for name, extra in (("train_fp32", []), ("train_bf16", ["--bf16"])):
        suite.run(name, [py, str(BENCH / "train_bench.py"), "--device", dev, "--channels-last",
                         *train, *extra], 120)  # fmt: skip
    if tiny or gpus >= 2:
        suite.run("nccl", [py, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "2", str(BENCH / "nccl_check.py"),
                           "--device", dev], 120)  # fmt: skip
    elif only is None or "nccl" in only:
        suite.skip("nccl", f"needs 2 GPUs, found {gpus}")
    else:
        suite.skip("nccl", "not in --only")
    suite.report["figures"] = figures(suite.report["steps"])
    suite.save()
    print(json.dumps({"figures": suite.report["figures"],
                      "failures": suite.report["failures"], "report": str(args.out)},
                     indent=2))  # fmt: skip
    return 1 if suite.report["failures"] else 0


def figures(steps: dict) -> dict:
    """The headline numbers of every step that produced them."""

    def result(name):
        step = steps.get(name) or {}
        return step.get("result") if step.get("status") == "ok" else None

    out: dict = {}
    if r := result("crf_batch"):
        for row in r["batches"]:
            out[f"crf_ms_per_image_batch{row['batch']}"] = row["ms_per_image"]
            out[f"crf_label_agreement_batch{row['batch']}"] = row["label_agreement_min"]
        out["crf_cpu_engine_ms_per_image"] = r["cpu_engine_ms_per_image"]
    if r := result("eval"):
        for row in r["runs"]:
            out[f"eval_crf_images_per_s_{row['procs']}proc"] = row["images_per_s"]
        out["eval_identical_results"] = r["identical_results"]
    for name in ("train_fp32", "train_bf16"):
        if r := result(name):
            out[f"{name}_images_per_s"] = r["images_per_s"]
    if r := result("nccl"):
        out["nccl_checks"] = r["checks"]
    if r := result("cuda_tests"):
        out["cuda_tests"] = r
    return out


if __name__ == "__main__":
    sys.exit(main())
