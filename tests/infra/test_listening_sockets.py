"""Nothing listens beyond the loopback interface in a single-process run: DeepSpeed in one process
(``--zero-stage`` without a launcher) meets its one-rank group through a file, not a TCP store
(torch's TCP store listens on every interface whatever address it is given).

The check runs in a child process (the process group lives until exit): it initialises the group
as ``simple-rlhf sft --zero-stage 0`` does, runs an all-reduce, then lists the TCP sockets it
listens on, read from ``/proc`` (its socket inodes matched against ``/proc/net/tcp{,6}``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

CHILD = textwrap.dedent(
    """
    import json, os, sys
    import torch
    sys.path.insert(0, sys.argv[1])
    from test_listening_sockets import listening
    from simple_rlhf.config import DistArgs
    from simple_rlhf.infra.distributed import init_distributed

    dist = init_distributed(DistArgs(zero_stage=0))
    t = torch.ones(2)
    torch.distributed.all_reduce(t)
    print(json.dumps({"world": torch.distributed.get_world_size(), "sum": t.tolist(),
                      "listening": listening()}))
    """
)


def listening() -> list[str]:
    """``addr:port`` of every TCP socket this process listens on (Linux ``/proc``)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            local, state, inode = cols[1], cols[3], cols[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                addr, port = local.split(":")
                out.append(f"{_addr(addr)}:{int(port, 16)}")
    return out


def _addr(hexaddr: str) -> str:
    """/proc/net/tcp's little-endian hex address as text (IPv4, or IPv6 as 8 groups)."""
    raw = bytes.fromhex(hexaddr)
    if len(raw) == 4:
        return ".".join(str(b) for b in raw[::-1])
    words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
    return ":".join(w[j : j + 2].hex() for w in words for j in (0, 2))


LOOPBACK = ("127.", "0000:0000:0000:0000:0000:0000:0000:0001", "0000:0000:0000:0000:0000:ffff:7f")


@pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="needs Linux /proc")
def test_one_process_deepspeed_group_listens_on_loopback_only():
    pytest.importorskip("deepspeed")
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    for key in (
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
        "GLOO_SOCKET_IFNAME",
    ):
        env.pop(key, None)
    here = str(Path(__file__).resolve().parent)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, here], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts["world"] == 1 and facts["sum"] == [1.0, 1.0]  # a working one-rank group
    wide = [a for a in facts["listening"] if not a.startswith(LOOPBACK)]
    assert not wide, f"listening beyond loopback: {wide} (all: {facts['listening']})"


def test_the_proc_reader_sees_a_wildcard_listener():
    """The reader itself: a socket bound to 0.0.0.0 shows up as such (else the test above could
    not fail)."""
    import socket

    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        assert f"0.0.0.0:{port}" in listening()
