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
import time

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
    """`ray start --head` and two worker nodes, one CPU each, on loopback only: inside a
    network namespace whose only interface is loopback (scripts/in_loopback_netns.sh, as
    `make test` runs these tests). Ray itself would turn 127.0.0.1 into the machine's address
    and listen on every interface."""
    if not os.environ.get("CLINSEARCH_LOOPBACK_NETNS"):
        why = ("the Ray tests run only inside a loopback-only network namespace "
               "(scripts/in_loopback_netns.sh, which needs root): Ray listens on every interface")
        if os.environ.get("CLINSEARCH_REQUIRE_TEST_DEPS"):
            pytest.fail(why)
        pytest.skip(why)
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


# ---------------------------------------------------------------------------------------
# Sharded serving on Ray Serve: the router over three shards answers as one directory.

QUERIES = REPO / "sample_corpus" / "queries.jsonl"
SERVE_STARTUP = 300


def _get(url: str, timeout: float = 60.0):
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        body = e.read()
        return e.code, (json.loads(body) if body.startswith(b"{") else body)


def _post(url: str, body: dict, timeout: float = 60.0):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def served(cluster, tmp_path_factory):
    """sample_corpus ingested into 3 shards and served by `python -m clinsearch.ray serve`,
    beside one data directory holding the same notes with the same vectors (imported from
    the shards' own export, so only the ranking differs, never an embedding)."""
    import urllib.parse

    tmp = tmp_path_factory.mktemp("served")
    out = tmp / "shards"
    # A search breadth past the number of chunks makes the vector side an exact scan on the
    # shards and on the single directory alike, so every mode can be compared for equality
    # (at the default breadth each hnsw graph is approximate in its own way; the Rust test
    # tests/it/shards.rs measures that side's recall).
    exact = ["--quantization", "f32"]
    report = _ingest(cluster, out, *exact, "--ef-search", "100000")
    assert report["notes"] == 324 and report["errors"] == []
    single = tmp / "single"
    for i, shard in enumerate(report["shards"]):
        exported = tmp / f"export-{i}.jsonl"
        run_cli("export-vectors", "--data", shard["dir"], "--out", str(exported))
        run_cli("ingest", "--vectors", "--model", str(TINY), "--window", "24", "--stride", "4", *exact,
                "--hnsw-ef-search", "100000", "--data", str(single), "--quiet", str(exported))
    port = _free_port()
    env = dict(os.environ, RAY_ADDRESS=cluster, CLINSEARCH_MODEL=str(TINY), RAY_USAGE_STATS_ENABLED="0")
    log = open(tmp / "serve.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "clinsearch.ray", "serve", "--shards", str(out), "--addr", f"127.0.0.1:{port}",
         "--window", "24", "--stride", "4", "--shard-timeout", "1.5", "--health-check-period", "2",
         "--cpus-per-shard", "0.25", "--cpus-router", "0.25"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVE_STARTUP
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"serve exited with {proc.returncode}: {log.read()[-4000:]}")
            try:
                status, body = _get(base + "/api/health", timeout=10)
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"serve did not answer within {SERVE_STARTUP} s: {log.read()[-4000:]}")
            time.sleep(1)
        encoder = clinsearch.Encoder(str(TINY), window=24, stride=4)
        searcher = clinsearch.Searcher(clinsearch.DataDir(str(single), encoder))
        yield {"base": base, "out": out, "single": searcher, "quote": urllib.parse.quote, "shards": report["shards"]}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _queries() -> list:
    with open(QUERIES) as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def _ids(reply: dict, mode: str) -> list:
    (ranking,) = [r for r in reply["rankings"] if r["mode"] == mode]
    return [h["id"] for h in ranking["hits"]]


def test_sharded_serving_ranks_as_one_directory(served):
    base, single = served["base"], served["single"]
    status, stats = _get(base + "/api/stats")
    assert status == 200 and stats["notes"] == 324 and stats["shards"] == {"total": 3, "answered": 3}
    for q in _queries():
        for mode in ("bm25", "semantic", "hybrid"):
            status, got = _get(f"{base}/api/search?q={served['quote'](q)}&mode={mode}&k=10")
            assert status == 200, got
            assert got["shards"] == {"total": 3, "answered": 3, "missing": []}
            want = single.search(q, mode=mode, k=10)
            assert _ids(got, mode) == _ids(want, mode), f"{mode} {q!r}"
            # The scores too: BM25 with the collection's statistics is the single index's.
            g = [h["score"] for h in got["rankings"][0]["hits"]]
            w = [h["score"] for h in want["rankings"][0]["hits"]]
            np.testing.assert_allclose(g, w, rtol=1e-5, err_msg=f"{mode} {q!r}")
    # Paging, filters, patient grouping, snippets and the POST form are the single node's.
    q = "chest pain shortness of breath"
    for params in (
        {"mode": "hybrid", "k": 5, "offset": 5},
        {"mode": "bm25", "k": 10, "group_by": "patient"},
        {"mode": "hybrid", "k": 10, "group_by": "patient", "offset": 2},
        {"mode": "hybrid", "k": 10, "filter": {"note_type": "discharge summary"}},
        {"mode": "compare", "k": 10},
        {"mode": "bm25", "k": 10, "assertion": "affirmed"},
    ):
        status, got = _post(base + "/api/search", {"q": q, **params})
        assert status == 200, got
        mode = params.pop("mode")
        k = params.pop("k")
        filters = params.pop("filter", None)
        want = single.search(q, mode=mode, k=k, filters=filters, **params)
        for g, w in zip(got["rankings"], want["rankings"]):
            assert g["mode"] == w["mode"] and g["candidates"] == w["candidates"], params
            if g["mode"] == "semantic":
                continue
            assert [h["id"] for h in g["hits"]] == [h["id"] for h in w["hits"]], (mode, params)
            assert [h["rank"] for h in g["hits"]] == [h["rank"] for h in w["hits"]]
            assert [h.get("group") for h in g["hits"]] == [h.get("group") for h in w["hits"]]
            assert [h["snippet"] for h in g["hits"]] == [h["snippet"] for h in w["hits"]]
    # A bad request is the caller's mistake, named.
    status, err = _get(f"{base}/api/search?q=x&k=0")
    assert status == 400 and err["error"]["code"] == "invalid_request" and "k" in err["error"]["message"]
    # The UI is served with its security headers.
    import urllib.request

    with urllib.request.urlopen(base + "/", timeout=30) as r:
        assert r.status == 200 and b"/assets/app.js" in r.read()
        assert "script-src 'self'" in r.headers["content-security-policy"]


def _owner(hit: dict) -> int:
    """The shard a hit's note was ingested into (by its patient)."""
    return clinsearch.shard_of({"id": hit["id"], "patient_id": hit.get("patient_id"), "text": "-"}, 3)


def test_each_shard_audits_the_notes_it_disclosed(served):
    base = served["base"]
    status, got = _get(f"{base}/api/search?q={served['quote']('heart attack')}&mode=bm25&k=5")
    assert status == 200
    top = got["rankings"][0]["hits"][0]["id"]
    owner = _owner(got["rankings"][0]["hits"][0])
    lines = run_cli("audit", "--data", served["shards"][owner]["dir"], "--note", top, "--json").stdout.splitlines()
    events = [json.loads(l) for l in lines if l.strip()]
    assert any(e["action"] == "search" and top in e["note_ids"] and e["principal"].startswith("ray-serve:") for e in events), events[-3:]
    # No other shard claims it.
    for s, shard in enumerate(served["shards"]):
        if s != owner:
            other = run_cli("audit", "--data", shard["dir"], "--note", top, "--json").stdout
            assert top not in other


def test_a_killed_shard_gives_partial_replies_then_serve_restarts_it(served):
    base = served["base"]
    status, shards = _get(base + "/api/shards")
    assert status == 200 and shards["answered"] == 3
    victim = shards["shards"][1]
    os.kill(victim["pid"], 9)
    q = served["quote"]("heart attack")
    # Serve brings a new replica up in about 3 s here; the deadline (1.5 s a step) is shorter.
    # While it is down: the others' results, flagged.
    deadline = time.monotonic() + 120
    partial = None
    while time.monotonic() < deadline:
        status, got = _get(f"{base}/api/search?q={q}&mode=hybrid&k=10")
        assert status == 200, got
        if got["shards"]["answered"] == 2:
            partial = got
            break
        time.sleep(0.2)
    assert partial is not None, "no partial reply while a shard was down"
    assert partial["shards"] == {"total": 3, "answered": 2, "missing": [victim["shard"]]}
    owners = [_owner(h) for h in partial["rankings"][0]["hits"]]
    assert partial["rankings"][0]["hits"] and 1 not in owners
    # Serve restarts the replica: full replies again, equal to the single directory's.
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        status, got = _get(f"{base}/api/search?q={q}&mode=hybrid&k=10")
        if status == 200 and got["shards"]["answered"] == 3:
            break
        time.sleep(1)
    else:
        pytest.fail("the killed shard did not come back within 180 s")
    assert _ids(got, "hybrid") == _ids(served["single"].search("heart attack", mode="hybrid", k=10), "hybrid")
    status, shards = _get(base + "/api/shards")
    assert shards["shards"][1]["pid"] != victim["pid"]
