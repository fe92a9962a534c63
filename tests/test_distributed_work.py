"""The shared machinery of commands under torchrun: the split, exact sums, merged summaries,
resumable per-item outputs and errors that reach every rank (gloo, 2 and 3 CPU processes)."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
from gloo_helpers import spawn

from deeplabv1.distributed.context import DistInfo
from deeplabv1.distributed.shard import shard, shard_bounds
from deeplabv1.distributed.work import (
    WorkSummary,
    merge_summaries,
    record_setup,
    split_complete,
)
from deeplabv1.errors import DeepLabError


@pytest.mark.parametrize("n,world", [(7, 3), (6, 3), (2, 3), (0, 2), (5, 1), (100, 7)])
def test_shard_is_a_balanced_partition_of_the_sorted_items(n, world):
    items = [f"img{(i * 37) % 101:03d}" for i in range(n)]  # unsorted, distinct
    parts = [shard(items, r, world) for r in range(world)]
    assert sum(parts, []) == sorted(items)  # every item once, in sorted order
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    assert [shard(items, r, world) for r in range(world)] == parts  # deterministic
    assert shard_bounds(n, world)[-1][1] == n


def test_shard_seven_over_three_and_a_key():
    ids = ["c", "a", "g", "e", "b", "f", "d"]
    assert [shard(ids, r, 3) for r in range(3)] == [["a", "b", "c"], ["d", "e"], ["f", "g"]]
    assert shard(range(7), 0, 3, key=lambda i: ids[i]) == [1, 4, 0]  # "a", "b", "c"
    with pytest.raises(ValueError):
        shard(ids, 3, 3)


def test_split_complete_and_merged_summary(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "b.png").write_bytes(b"x")
    (tmp_path / "b.npz").write_bytes(b"x")
    todo, done = split_complete(
        ["a", "b", "c"], lambda n: [tmp_path / f"{n}.png", tmp_path / f"{n}.npz"]
    )
    assert (todo, done) == (["a", "c"], ["b"])
    merged = merge_summaries([
        WorkSummary(rank=1, processed=["d", "c"], failed={"e": "bad"}, seconds=2.0),
        WorkSummary(rank=0, processed=["b"], skipped=["a"], seconds=1.0),
    ])  # fmt: skip
    assert merged["processed"] == ["b", "c", "d"] and merged["skipped"] == ["a"]
    assert merged["failed"] == [{"name": "e", "error": "bad"}]
    assert merged["counts"] == {"processed": 3, "skipped": 1, "failed": 1}
    assert [r["rank"] for r in merged["ranks"]] == [0, 1] and merged["world_size"] == 2


def test_record_setup_refuses_to_mix_outputs(tmp_path):
    one = DistInfo()
    rec = tmp_path / "out" / "setup.json"
    record_setup(rec, {"sa": 1}, resume=False, info=one)  # fresh folder
    (tmp_path / "out" / "x.png").write_bytes(b"x")
    record_setup(rec, {"sa": 1}, resume=True, info=one)  # same settings: reuse
    with pytest.raises(DeepLabError, match="other settings.*sa: 1 then, 2 now"):
        record_setup(rec, {"sa": 2}, resume=True, info=one)
    record_setup(rec, {"sa": 2}, resume=False, info=one)  # starts over earlier outputs
    with pytest.raises(DeepLabError, match="earlier run's outputs"):
        record_setup(rec, {"sa": 2}, resume=True, info=one)
    rec.unlink()
    with pytest.raises(DeepLabError, match="no setup.json"):
        record_setup(rec, {"sa": 2}, resume=True, info=one)


def _collectives(rank: int, world: int, out: str) -> None:
    """Every check in one group (joining a group costs seconds); a failure fails the rank."""
    from deeplabv1.distributed.context import (
        all_reduce_arrays,
        broadcast_object,
        distributed_session,
    )
    from deeplabv1.distributed.work import (
        check_all,
        gather_summaries,
        on_main,
        record_setup,
        write_summary,
    )

    with distributed_session("cpu") as info:
        assert (info.rank, info.world_size, info.distributed) == (rank, world, True)
        # exact sums: int64 counts beyond float64's 53 bits, float arrays, several shapes
        big = np.array([[2**60 + rank, rank], [1, -rank]], dtype=np.int64)
        sums = all_reduce_arrays({"big": big, "f": np.full(3, 0.5), "v": np.arange(4) * rank},
                                 info)  # fmt: skip
        tot = sum(range(world))
        assert sums["big"].dtype == np.int64
        assert sums["big"].tolist() == [[world * 2**60 + tot, tot], [world, -tot]]
        assert sums["f"].tolist() == [0.5 * world] * 3
        assert sums["v"].tolist() == (np.arange(4) * tot).tolist()
        assert broadcast_object({"from": rank}, info) == {"from": 0}
        # items split over ranks, summaries merged on every rank, written once
        items = [f"img{i}" for i in range(7)]
        mine = shard(items, rank, world)
        summary = WorkSummary(rank=rank, processed=mine[1:], skipped=mine[:1],
                              failed={f"bad{rank}": "unreadable"} if rank == 1 else {})  # fmt: skip
        merged = gather_summaries(summary, info)
        assert sorted(merged["processed"] + merged["skipped"]) == items
        assert merged["skipped"] == [shard(items, r, world)[0] for r in range(world)]
        assert merged["failed"] == [{"name": "bad1", "error": "unreadable"}]
        written = write_summary(os.path.join(out, "summary.json"), merged, info)
        assert (written is not None) == (rank == 0)
        # an error on one rank is raised on every rank, nobody waits forever
        try:
            check_all("rank 1: broken" if rank == 1 else None, info, "step")
            raise AssertionError("check_all did not raise")
        except DeepLabError as exc:
            assert str(exc) == "rank 1: broken"
        check_all(None, info, "step")  # all well: no error

        def fail():
            raise DeepLabError("only rank 0 saw this")

        try:
            on_main(fail, info)
            raise AssertionError("on_main did not raise")
        except DeepLabError as exc:
            assert "only rank 0" in str(exc)
        assert on_main(lambda: rank + 40, info) == 40
        rec = os.path.join(out, "outputs", "setup.json")
        record_setup(rec, {"a": 1}, resume=False, info=info)
        try:
            record_setup(rec, {"a": 2}, resume=True, info=info)
            raise AssertionError("record_setup accepted other settings")
        except DeepLabError as exc:
            assert "other settings" in str(exc)
    with open(os.path.join(out, f"rank{rank}.done"), "w") as f:
        f.write(str(time.time()))


@pytest.mark.parametrize("world", [2, 3])
def test_collectives_over_gloo_processes(tmp_path, world):
    spawn(_collectives, world, str(tmp_path))
    assert sorted(p.name for p in tmp_path.glob("*.done")) == [
        f"rank{r}.done" for r in range(world)
    ]
    merged = json.loads((tmp_path / "summary.json").read_text())
    assert merged["world_size"] == world and merged["counts"]["failed"] == 1
    assert merged["counts"]["processed"] + merged["counts"]["skipped"] == 7
    assert [r["skipped"] for r in merged["ranks"]] == [1] * world
