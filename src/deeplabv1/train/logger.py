"""Training progress: a tqdm bar, a JSONL log and (when installed) TensorBoard event files.

``log.jsonl`` holds one JSON dict per logged iteration, at least
``{"iter", "loss", "lr", "images_per_s", "time"}``: ``iter`` counts completed iterations,
``loss`` is the mean loss over the iterations since the previous line, ``lr`` the base lr of the
last of them, ``images_per_s`` the throughput over them and ``time`` seconds since the start of
this process's run. TensorBoard events go to ``<out_dir>/tb`` when ``tensorboard`` is importable;
otherwise they are skipped silently. Only rank 0 creates a ``TrainLogger``.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from deeplabv1.errors import DeepLabError
from deeplabv1.io import atomic_write_text, record_outputs, write_error


def read_log(path: str | Path) -> list[dict]:
    """The records of a JSONL log (a truncated last line from a crash is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def truncate_log(path: str | Path, iteration: int) -> None:
    """Drop records past ``iteration`` (left by a run that crashed after its last checkpoint)."""
    path = Path(path)
    if not path.is_file():
        return
    kept = [r for r in read_log(path) if r.get("iter", 0) <= iteration]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def _summary_writer(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional extra
        return None
    return SummaryWriter(log_dir=str(log_dir))


class TrainLogger:
    """Writes progress for iterations ``start_iter + 1 .. max_iter``."""

    def __init__(
        self,
        out_dir: str | Path,
        *,
        start_iter: int,
        max_iter: int,
        progress: bool = True,
        tensorboard: bool = True,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.log_path = self.out_dir / "log.jsonl"
        truncate_log(self.log_path, start_iter)
        try:
            self._file = open(self.log_path, "a", buffering=1)  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise write_error(self.log_path, exc) from exc
        record_outputs([self.log_path], grown=True)  # appended to: ours while it is this file
        self._tb = _summary_writer(self.out_dir / "tb") if tensorboard else None
        self._bar = None
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=max_iter, initial=start_iter, desc="train", unit="it",
                             dynamic_ncols=True)
        self._last_iter = start_iter

    def log(self, record: dict) -> None:
        """Append one record (must have ``iter``); update the bar and TensorBoard."""
        try:
            self._file.write(json.dumps(record) + "\n")
        except OSError as exc:  # a full disk: say which file and why
            raise write_error(self.log_path, exc) from exc
        it = int(record["iter"])
        if self._tb is not None:
            for key, value in record.items():
                if key != "iter" and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"train/{key}", value, it)
        if self._bar is not None:
            self._bar.update(it - self._last_iter)
            self._bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                  img_s=f"{record['images_per_s']:.2f}")
        self._last_iter = it

    def message(self, text: str) -> None:
        """A line of text that does not break the progress bar."""
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        """Flush and close everything."""
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        self._file.close()
        with contextlib.suppress(DeepLabError):  # complete now: ours while it stays unchanged
            record_outputs([self.log_path])
