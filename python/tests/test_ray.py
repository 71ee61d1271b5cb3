"""Distributed ingest on a real Ray cluster of three processes (a head and two worker nodes,
all bound to 127.0.0.1): the shards together hold exactly what single-node ingest stores,
a patient's notes stay on one shard, a re-run converges, and a worker killed mid-run loses
and duplicates nothing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import clinsearch
from conftest import NOTES, REPO, TINY, run_cli, sample_notes

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'ray[data,serve]')")

# Each step of the cluster is bounded: a test that cannot finish fails instead of hanging.
STEP_TIMEOUT = 420


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args: str, env=None) -> None:
    r = subprocess.run(["ray", *args], capture_output=True, text=True, timeout=STEP_TIMEOUT, env=env)
    assert r.returncode == 0, f"ray {' '.join(args)}: {r.stdout[-2000:]}{r.stderr[-2000:]}"


@pytest.fixture(scope="module")
def cluster():
    """`ray start --head` and two worker nodes, one CPU each, on loopback only."""
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="rcs-", dir="/tmp")  # Ray's socket paths must stay short
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    _ray("start", "--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}", *common, env=env)
    address = f"127.0.0.1:{port}"
    try:
        for _ in range(2):
            _ray("start", f"--address={address}", *common, env=env)
        yield address
    finally:
        subprocess.run(["ray", "stop", "--force"], capture_output=True, timeout=120)


def _ingest(address: str, out, *extra: str, env_extra=None) -> dict:
    env = dict(os.environ, RAY_ADDRESS=address, CLINSEARCH_MODEL=str(TINY), RAY_USAGE_STATS_ENABLED="0")
    env.update(env_extra or {})
    cmd = [sys.executable, "-m", "clinsearch.ray", "ingest", "--shards", "3", "--out", str(out),
           "--window", "24", "--stride", "4", "--workers", "2", "--batch-size", "32", "--json", "--quiet",
           *extra, str(NOTES)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=STEP_TIMEOUT, env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr[-4000:]
    # Ray itself may write to standard output too (a retried task's notice): the report is
    # the one JSON line.
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    assert len(lines) == 1, r.stdout[-4000:]
    return json.loads(lines[0])


def _exported(data_dir, tmp) -> dict:
    """Every stored note of a data directory with its chunks and vectors (export-vectors)."""
    out = os.path.join(tmp, os.path.basename(str(data_dir)) + ".jsonl")
    run_cli("export-vectors", "--data", str(data_dir), "--out", out)
    notes = {}
    with open(out) as f:
        for line in f:
            v = json.loads(line)
            if "clinsearch_vectors" in v:
                continue
            notes[v["id"]] = v
    return notes


def _same_notes(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for i in a:
        ca, cb = a[i]["chunks"], b[i]["chunks"]
        assert [(c["char_start"], c["char_end"]) for c in ca] == [(c["char_start"], c["char_end"]) for c in cb], i
        np.testing.assert_allclose(
            np.array([c["vector"] for c in ca]), np.array([c["vector"] for c in cb]), atol=1e-5
        )
        assert {k: v for k, v in a[i].items() if k != "chunks"} == {k: v for k, v in b[i].items() if k != "chunks"}


def _check_shards(report: dict, out, single: dict, tmp) -> None:
    assert report["errors"] == []
    assert report["notes"] == len(single) == 324
    merged = {}
    expected = dict(zip([n["id"] for n in sample_notes()], clinsearch.shards_of(sample_notes(), 3)))
    for s, shard in enumerate(report["shards"]):
        notes = _exported(shard["dir"], tmp)
        assert notes, f"shard {s} is empty"
        assert not set(notes) & set(merged), "a note is on two shards"
        assert all(expected[i] == s for i in notes), "a note is on another shard than its patient's"
        merged.update(notes)
    _same_notes(merged, single)


def test_sharded_ingest_equals_single_node_and_converges(cluster, cli_data, tmp_path):
    single = _exported(cli_data, str(tmp_path))
    out = tmp_path / "shards"
    first = _ingest(cluster, out)
    _check_shards(first, out, single, str(tmp_path))
    assert len(first["workers"]) >= 1 and all(w["notes_per_second"] > 0 for w in first["workers"].values())
    # Each shard is an ordinary data directory.
    stats = [json.loads(run_cli("stats", "--data", s["dir"]).stdout) for s in first["shards"]]
    assert sum(s["notes"] for s in stats) == 324
    again = _ingest(cluster, out)
    assert [s["notes"] for s in again["shards"]] == [s["notes"] for s in first["shards"]]
    assert [s["chunks"] for s in again["shards"]] == [s["chunks"] for s in first["shards"]]
    _check_shards(again, out, single, str(tmp_path))


def test_a_killed_worker_loses_and_duplicates_nothing(cluster, cli_data, tmp_path):
    single = _exported(cli_data, str(tmp_path))
    marker = tmp_path / "killed"
    out = tmp_path / "shards"
    report = _ingest(cluster, out, env_extra={"CLINSEARCH_RAY_KILL_ONCE": str(marker)})
    assert marker.exists(), "no worker was killed: the test tested nothing"
    _check_shards(report, out, single, str(tmp_path))
