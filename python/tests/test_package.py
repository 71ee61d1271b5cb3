"""The Python package is the Rust library: what it embeds, stores and ranks equals what the
clinsearch binary does with the same model and notes, and its mistakes are clear errors."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request

import numpy as np
import pytest

import clinsearch
from conftest import CLI_TINY, NOTES, TINY, TINY_OPTS, binary, run_cli, sample_notes


def test_embed_equals_the_cli(encoder):
    texts = ["Chest pain radiating to the left arm.", "No fever. Lungs clear to auscultation."]
    cli = json.loads(run_cli("embed", *CLI_TINY, *texts).stdout)
    ours = encoder.embed(texts)
    assert ours.dtype == np.float32 and ours.shape == (2, encoder.dim)
    assert cli["dim"] == encoder.dim
    theirs = np.array(cli["embeddings"], dtype=np.float32)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_windows_cover_long_texts_with_character_spans(encoder):
    long = " ".join(["Patient denies chest pain and shortness of breath."] * 12)
    vectors, spans = encoder.embed([long, "short"], windows=True)
    assert vectors.shape[0] == len(spans) > 2
    assert [s for s in spans if s[0] == 1] == [(1, 0, 5)]
    first = [s for s in spans if s[0] == 0]
    assert first[0][1] == 0 and first[-1][2] == len(long)
    assert all(a[1] < b[1] for a, b in zip(first, first[1:]))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_tokenize_and_fill_mask(encoder):
    t = encoder.tokenize("Chest pain")
    assert len(t["ids"]) == len(t["tokens"]) == len(t["offsets"]) >= 2
    assert t["offsets"][0][0] == 0
    preds = encoder.fill_mask("the patient has chest [MASK].", top_k=3)
    assert len(preds) == 1 and len(preds[0]["candidates"]) == 3
    scores = [c["score"] for c in preds[0]["candidates"]]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001


def test_imported_vectors_equal_notes_embedded_in_rust(encoder, tmp_path):
    notes = sample_notes(40)
    a = clinsearch.DataDir(str(tmp_path / "a"), encoder)
    ra = a.add(notes)
    assert ra["notes"] == 40 and not ra["errors"]
    embedded, vectors = encoder.embed_notes(notes)
    assert vectors.shape == (sum(len(n["chunks"]) for n in embedded), encoder.dim)
    b = clinsearch.DataDir(str(tmp_path / "b"), encoder)
    rb = b.import_chunks(embedded, vectors)
    assert rb["notes"] == 40 and rb["chunks"] == ra["chunks"] and not rb["errors"]
    again = b.import_chunks(embedded, vectors)  # upserts: nothing is added twice
    assert again["notes"] == 40
    sa, sb = a.stats(), b.stats()
    for k in ("notes", "chunks", "bm25_docs", "live_vectors"):
        assert sa[k] == sb[k], k
    for mode in ("bm25", "semantic", "hybrid"):
        ha = clinsearch.Searcher(a).search("troponin chest pain", mode=mode, k=10)
        hb = clinsearch.Searcher(b).search("troponin chest pain", mode=mode, k=10)
        ids = lambda r: [(h["id"], round(h["score"], 5)) for h in r["rankings"][0]["hits"]]
        assert ids(ha) == ids(hb) and ids(ha), mode


def test_search_answers_what_the_http_api_answers(encoder, cli_data, tmp_path):
    served = tmp_path / "served"
    mine = tmp_path / "mine"
    shutil.copytree(cli_data, served)
    shutil.copytree(cli_data, mine)
    config = tmp_path / "clinsearch.toml"
    key = run_cli("keys", "new", "tester", "--role", "admin", "--config", str(config)).stdout.strip()
    server = subprocess.Popen(
        [str(binary()), "serve", "--addr", "127.0.0.1:0", "--model", str(TINY), "--data", str(served), "--config", str(config)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        addr = None
        deadline = time.time() + 120
        while time.time() < deadline:
            line = server.stderr.readline()
            if not line:
                break
            if line.startswith("clinsearch serving on http://"):
                addr = line.strip().removeprefix("clinsearch serving on http://").rstrip("/")
                break
        assert addr, "the server did not start"
        threading.Thread(target=server.stderr.read, daemon=True).start()
        data = clinsearch.DataDir(str(mine), clinsearch.Encoder(str(TINY), data=str(mine), **TINY_OPTS))
        searcher = clinsearch.Searcher(data)
        for body in [
            {"q": "chest pain", "mode": "hybrid", "k": 5},
            {"q": "shortness of breath", "mode": "bm25", "k": 8, "filter": {"note_type": "discharge summary"}},
            {"q": "diabetes", "mode": "compare", "k": 3, "group_by": "patient"},
            {"q": "MI", "mode": "semantic", "k": 4, "assertion": "affirmed"},
        ]:
            req = urllib.request.Request(
                f"http://{addr}/api/search",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
            )
            http = json.loads(urllib.request.urlopen(req, timeout=60).read())
            params = {k: v for k, v in body.items() if k not in ("q", "mode", "k", "filter")}
            ours = searcher.search(body["q"], mode=body["mode"], k=body["k"], filters=body.get("filter"), **params)
            assert set(ours) == set(http), body
            for r in (ours, http):
                r.pop("took_ms")
                r.pop("timings")
            assert ours == http, body
    finally:
        server.kill()
        server.wait()


def test_every_search_is_in_the_access_audit(encoder, tmp_path):
    data = clinsearch.DataDir(str(tmp_path / "d"), encoder)
    data.add(sample_notes(30))
    reply = clinsearch.Searcher(data).search("chest pain", mode="bm25", k=5)
    shown = [h["id"] for h in reply["rankings"][0]["hits"]]
    assert shown
    lines = [json.loads(l) for f in sorted(glob.glob(str(tmp_path / "d" / "audit" / "*.jsonl"))) for l in open(f)]
    event = lines[-1]
    assert event["action"] == "search" and event["principal"].startswith("python:")
    assert event["note_ids"] == shown
    assert event["query_sha256"] and "chest" not in json.dumps(lines)


def test_bad_input_is_a_clear_error_and_stores_nothing(encoder, tmp_path):
    data = clinsearch.DataDir(str(tmp_path / "d"), encoder)
    with pytest.raises(ValueError, match="dimensions"):
        data.import_chunks([{"id": "x", "text": "abc"}], np.zeros((1, encoder.dim + 1), dtype=np.float32))
    assert data.stats()["notes"] == 0
    report = data.import_chunks(
        [{"id": "a", "text": "chest pain"}, {"text_missing": 1}, {"id": "c", "text": "abc", "chunks": [{"char_start": 0, "char_end": 9, "row": 1}]}],
        np.ones((2, encoder.dim), dtype=np.float32),
    )
    assert report["notes"] == 1
    assert any(e.startswith("request:2:") and "text" in e for e in report["errors"])
    assert any(e.startswith("request:3:") and "span" in e for e in report["errors"])
    with pytest.raises(ValueError, match="unknown parameter"):
        clinsearch.Searcher(data).search("x", colour="red")
    with pytest.raises(ValueError):
        clinsearch.Searcher(data).search("x", k=0)
    with pytest.raises(FileNotFoundError):
        clinsearch.Encoder(str(tmp_path / "no-such-model"))


def test_a_directory_built_by_another_model_is_refused(encoder, tmp_path):
    clinsearch.DataDir(str(tmp_path / "d"), encoder).add(sample_notes(2))
    other = clinsearch.Encoder(str(TINY), window=32, stride=4)
    with pytest.raises(ValueError, match="another model"):
        clinsearch.DataDir(str(tmp_path / "d"), other)


def test_work_releases_the_gil(encoder):
    ticks = 0
    done = threading.Event()

    def count():
        nonlocal ticks
        while not done.is_set():
            ticks += 1

    t = threading.Thread(target=count)
    t.start()
    time.sleep(0.05)
    # One call long enough to tell (a release build is many times faster than the dev one).
    n = 64
    while True:
        texts = [" ".join(["Patient denies chest pain and shortness of breath."] * 6)] * n
        before = ticks
        start = time.perf_counter()
        encoder.embed(texts, windows=True)
        took = time.perf_counter() - start
        during = ticks - before
        if took > 0.05 or n >= 8192:
            break
        n *= 2
    done.set()
    t.join()
    # With the GIL held for the whole call, the counting thread would not run at all.
    assert took > 0.05 and during > 10_000, (took, during, n)


def test_shards_are_stable_and_keep_a_patients_notes_together():
    def fnv(s: str) -> int:
        h = 0xCBF29CE484222325
        for b in s.encode():
            h = ((h ^ b) * 0x100000001B3) % 2**64
        return h

    notes = sample_notes()
    shards = clinsearch.shards_of(notes, 3)
    by_patient = {}
    for n, s in zip(notes, shards):
        key = f"patient:{n['patient_id']}" if n.get("patient_id") else f"note:{n['id']}"
        assert s == fnv(key) % 3
        by_patient.setdefault(n.get("patient_id"), set()).add(s)
    assert all(len(v) == 1 for p, v in by_patient.items() if p)
    assert len(set(shards)) == 3
    assert clinsearch.shard_of({"id": "x", "text": "t", "metadata": {"patient_id": "P9"}}, 7) == fnv("patient:P9") % 7


def test_the_sharded_router_listens_on_loopback_only():
    from clinsearch.ray.serve import _loopback

    assert _loopback("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert _loopback("localhost:9") == ("127.0.0.1", 9)
    assert _loopback("[::1]:8080") == ("::1", 8080)
    for addr in ("0.0.0.0:8080", "192.0.2.2:8080", "[::]:8080"):
        with pytest.raises(SystemExit, match="loopback"):
            _loopback(addr)
    with pytest.raises(SystemExit, match="port"):
        _loopback("127.0.0.1:http")


def test_a_shard_step_refuses_bad_requests_and_bad_statistics(cli_copy, encoder):
    from clinsearch import _native

    with pytest.raises(ValueError, match="k"):
        _native.search_plan(json.dumps({"q": "chest pain", "k": 0}))
    with pytest.raises(ValueError, match="name, value"):
        _native.search_plan(json.dumps([["q", 5]]))
    plan = json.loads(_native.search_plan(json.dumps([["q", "SOB"], ["mode", "bm25"]])))
    assert plan == {"needs_vector": False, "embedding_text": "SOB", "mode": "bm25", "asks_collection": False}
    # "PE" has senses the query's other words choose among: step 1 is needed.
    plan = json.loads(_native.search_plan(json.dumps({"q": "PE on CT angiogram"})))
    assert plan["asks_collection"] and plan["needs_vector"]
    assert not json.loads(_native.search_plan(json.dumps({"q": "PE on CT angiogram", "expand": False})))["asks_collection"]
    searcher = _native.Searcher(clinsearch.DataDir(str(cli_copy), encoder)._inner)
    with pytest.raises(ValueError, match="collection statistics"):
        searcher.shard_statistics(json.dumps({"q": "x"}), "not json")
    # One shard alone: the steps give the directory's own search.
    req = json.dumps({"q": "chest pain", "mode": "bm25", "k": 5})
    stats = _native.sum_statistics(json.dumps([json.loads(searcher.shard_cooccurrence(req)),
                                               json.loads(searcher.shard_statistics(req, "{}"))]))
    merged = _native.merge_candidates("[" + searcher.shard_candidates(req, stats) + "]")
    got = json.loads(searcher.search_merged(req, stats, merged))
    assert [h["id"] for h in got["rankings"][0]["hits"]] == [
        h["id"] for h in json.loads(searcher.search(req))["rankings"][0]["hits"]
    ]


def test_ray_ingest_refuses_encoder_actors_that_leave_no_cpu_for_reading():
    import types

    from clinsearch.ray.ingest import _check_cpus

    plan = types.SimpleNamespace(workers=2, cpus_per_worker=1.0)
    with pytest.raises(SystemExit, match="leave none for reading"):
        _check_cpus(2, plan)
    _check_cpus(3, plan)
    _check_cpus(2, types.SimpleNamespace(workers=2, cpus_per_worker=0.5))
