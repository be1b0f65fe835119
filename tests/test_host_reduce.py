"""A log row's sum across ranks under NCCL goes through a gloo host group (two real processes,
without Lightning: ``reduce_worker.py``)."""

from __future__ import annotations

import json

import pytest
from reduce_worker import free_port, reduction_worker


def _reduce_in_two_processes(tmp_path, mode: str) -> list[dict]:
    import torch.multiprocessing as mp

    mp.start_processes(
        reduction_worker,
        args=(free_port(), mode, str(tmp_path)),
        nprocs=2,
        start_method="spawn",
    )
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_log_rows_reduce_on_a_host_group_under_nccl(tmp_path):
    """Under NCCL a log row's sum goes through a gloo group made once at ``begin``: no tensor
    on the GPU, so no wait for its queue; only the group's creation agrees on the device."""
    for rank, r in enumerate(_reduce_in_two_processes(tmp_path, "nccl")):
        assert r["separate"] and r["backend"] == "gloo" and r["same"], r
        assert r["made"] == 2, r  # the ranks agreed to make it, then that every one did
        assert r["per_row"] == 0, r  # 3 sums and 3 log rows, none on the default group
        assert r["sums"] == [[3.0, 1.0]] * 3
        assert r["warned"] == [], rank


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "why"), [("no gloo", "RuntimeError: gloo"), ("opted out on rank 1", "HOST_REDUCE=0")]
)
def test_without_a_host_group_the_rows_fall_back_with_a_warning(tmp_path, mode, why):
    """Where gloo fails, or one rank opts out, every rank falls back (never a mix: a rank
    alone in a collective waits for its timeout) and rank zero says rows now synchronise."""
    ranks = _reduce_in_two_processes(tmp_path, mode)
    for r in ranks:
        assert r["backend"] is None, r
        assert r["per_row"] == 6, r  # every sum and log row on the default group
        assert r["sums"] == [[3.0, 1.0]] * 3
    if mode == "no gloo":
        assert [r["made"] for r in ranks] == [2, 2] and [r["tried"] for r in ranks] == [[0], [1]]
    else:  # agreed not to try: nobody waits in a group made by half the ranks
        assert [r["made"] for r in ranks] == [1, 1] and [r["tried"] for r in ranks] == [[], []]
    (warning,) = ranks[0]["warned"]
    assert why in warning and "synchronisation per log row" in warning
    assert ranks[1]["warned"] == []  # said once, by rank zero
