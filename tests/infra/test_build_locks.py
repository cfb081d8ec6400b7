"""A build lock left by an interrupted DeepSpeed op build is removed before DeepSpeed starts (no
silent hang); a lock a live build holds is left alone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from simple_rlhf.infra import build_locks as bl


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="holders are read from /proc")
def test_stale_lock_removed_live_lock_kept(tmp_path, capsys):
    stale = tmp_path / "deepspeed_shm_comm" / "lock"
    live = tmp_path / "py311_cpu" / "cpu_adam" / "lock"
    for p in (stale, live):
        p.parent.mkdir(parents=True)
    stale.touch()  # as FileBaton leaves it when its builder is killed
    fd = os.open(live, os.O_CREAT | os.O_EXCL)  # as FileBaton holds it while building
    try:
        assert bl.build_locks(tmp_path) == sorted([stale, live])
        assert bl.holders(live) == [os.getpid()] and bl.holders(stale) == []
        assert bl.recover_stale_build_locks(tmp_path) == [stale]
    finally:
        os.close(fd)
    assert not stale.exists() and live.exists()
    err = capsys.readouterr().err
    assert f"removed a stale build lock left by an interrupted build: {stale}" in err
    assert f"waiting for a build by pid {os.getpid()}" in err


def test_without_proc_an_old_lock_is_reported_with_the_remedy(tmp_path, monkeypatch):
    lock = tmp_path / "op" / "lock"
    lock.parent.mkdir()
    lock.touch()
    monkeypatch.setattr(bl, "holders", lambda path: None)
    assert bl.recover_stale_build_locks(tmp_path) == []  # young: may be a live build
    old = lock.stat().st_mtime - bl.STALE_AFTER_S - 60
    os.utime(lock, (old, old))
    with pytest.raises(bl.StaleBuildLockError, match="delete that file"):
        bl.recover_stale_build_locks(tmp_path)


@pytest.mark.multiproc
def test_deepspeed_start_goes_on_after_an_interrupted_build(tmp_path):
    """A planted stale lock in the (real) extensions folder of a one-process DeepSpeed start:
    before the fix torch waited on it forever; now it is removed and the group comes up."""
    pytest.importorskip("deepspeed")
    from simple_rlhf.infra.build_locks import extensions_root

    root = extensions_root()
    lock = root / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.touch()
    code = (
        "from simple_rlhf.config import DistArgs;"
        "from simple_rlhf.infra.distributed import init_distributed;"
        "d = init_distributed(DistArgs(zero_stage=0)); print('world', d.world_size)"
    )
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world 1" in proc.stdout and "removed a stale build lock" in proc.stderr
    assert not lock.exists()
