"""Distributed ingest and sharded serving on Ray against one machine's clinsearch, in one run.

    make bench-ray        (runs this inside a loopback-only network namespace, as root)

1. The first N MTSamples reports (BENCH_RAY_NOTES, default 600) with the default model:
   `clinsearch ingest` into one data directory (the peer), then `python -m clinsearch.ray
   ingest --shards 3` on a local Ray cluster of a head and two worker nodes (one CPU each, on
   this machine's cores), encoder actors as given by BENCH_RAY_WORKERS (default 2). Notes/s of both, their ratio,
   and the Ray report's per-worker rates.
2. `python -m clinsearch.ray serve` over the shards against `clinsearch serve` over the one
   directory: the 45 sample_corpus queries in BM25 and hybrid mode, one client, sequential,
   REPEAT rounds; p50 and p99 of each and the ratio, and whether the top 10 agree.

Needs the release binary (cargo build --release) and the package installed in release
(pip install ./python). Prints the CPU; every figure is a median over the queries.
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "mtsamples" / "mtsamples.csv"
MODEL = os.environ.get("CLINSEARCH_MODEL", str(REPO / "models" / "all-MiniLM-L6-v2"))
BIN = REPO / "target" / "release" / "clinsearch"


def cpu() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} vCPUs"
    return platform.processor()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def notes(n: int) -> list:
    out = []
    with open(DATA, newline="") as f:
        for row in csv.DictReader(f):
            text = (row.get("transcription") or "").strip()
            if not text:
                continue
            out.append({"id": f"mt{row['note_id']}", "title": row["description"].strip(), "text": text,
                        "specialty": row["medical_specialty"].strip(), "patient_id": f"p{int(row['note_id']) % 997}"})
            if len(out) == n:
                break
    return out


def wait_http(url: str, proc, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: the server exited ({proc.returncode})")
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise SystemExit(f"{url}: no answer in {seconds} s")


def timed_queries(base: str, queries: list, mode: str, rounds: int) -> tuple:
    times, tops = [], {}
    for _ in range(rounds):
        for q in queries:
            url = f"{base}/api/search?q={urllib.parse.quote(q)}&mode={mode}&k=10"
            t = time.perf_counter()
            with urllib.request.urlopen(url, timeout=60) as r:
                body = json.loads(r.read())
            times.append((time.perf_counter() - t) * 1e3)
            tops[q] = [h["id"] for h in body["rankings"][0]["hits"]]
    times.sort()
    return statistics.median(times), times[int(0.99 * (len(times) - 1))], tops


def main() -> int:
    if not DATA.exists():
        print(f"skipped: {DATA} is absent (the shared MTSamples data)")
        return 0
    if not BIN.exists():
        print("needs the release binary: cargo build --release", file=sys.stderr)
        return 2
    if not os.environ.get("CLINSEARCH_LOOPBACK_NETNS"):
        print("run through scripts/in_loopback_netns.sh (make bench-ray): Ray listens on every interface", file=sys.stderr)
        return 2
    n = int(os.environ.get("BENCH_RAY_NOTES", "600"))
    workers = os.environ.get("BENCH_RAY_WORKERS", "2")
    rounds = int(os.environ.get("BENCH_RAY_ROUNDS", "3"))
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="ray-bench-"))
    src = tmp / "notes.jsonl"
    with open(src, "w") as f:
        for note in notes(n):
            f.write(json.dumps(note) + "\n")
    print(f"# Ray against one machine: {n} MTSamples notes, {MODEL}; CPU: {cpu()}")

    t = time.perf_counter()
    subprocess.run([str(BIN), "ingest", "--model", MODEL, "--data", str(tmp / "single"), "--quiet", str(src)], check=True)
    single_s = time.perf_counter() - t

    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", CLINSEARCH_MODEL=MODEL)
    port = free_port()
    temp = tempfile.mkdtemp(prefix="rb-", dir="/tmp")
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    subprocess.run(["ray", "start", "--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}", *common],
                   check=True, capture_output=True, env=env)
    procs = []
    try:
        for _ in range(2):  # three nodes of one CPU, as the tests: one CPU reads, two embed
            subprocess.run(["ray", "start", f"--address=127.0.0.1:{port}", *common], check=True, capture_output=True, env=env)
        env["RAY_ADDRESS"] = f"127.0.0.1:{port}"
        r = subprocess.run([sys.executable, "-m", "clinsearch.ray", "ingest", "--shards", "3", "--out", str(tmp / "shards"),
                            "--workers", workers, "--json", "--quiet", str(src)],
                           check=True, capture_output=True, text=True, env=env)
        report = json.loads([line for line in r.stdout.splitlines() if line.startswith("{")][-1])
        single_rate = n / single_s
        print("\n| ingest | notes | seconds | notes/s | ratio to one machine |")
        print("|---|---:|---:|---:|---:|")
        print(f"| clinsearch ingest (one process) | {n} | {single_s:.1f} | {single_rate:.2f} | 1.00x |")
        print(f"| clinsearch.ray ingest (3 shards, {workers} encoder actors) | {report['notes']} | {report['seconds']:.1f} "
              f"| {report['notes_per_second']:.2f} | {report['notes_per_second'] / single_rate:.2f}x |")
        for w, v in report["workers"].items():
            print(f"|   worker {w} | {v['notes']} | {v['embed_seconds']:.1f} (embedding) | {v['notes_per_second']:.2f} | |")

        queries = [json.loads(line)["text"] for line in open(REPO / "sample_corpus" / "queries.jsonl") if line.strip()]
        sport = free_port()
        single = subprocess.Popen([str(BIN), "serve", "--model", MODEL, "--data", str(tmp / "single"), "--addr", f"127.0.0.1:{sport}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(single)
        rport = free_port()
        router = subprocess.Popen([sys.executable, "-m", "clinsearch.ray", "serve", "--shards", str(tmp / "shards"),
                                   "--addr", f"127.0.0.1:{rport}", "--cpus-per-shard", "0.25", "--cpus-router", "0.25"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        procs.append(router)
        wait_http(f"http://127.0.0.1:{sport}/api/health", single)
        wait_http(f"http://127.0.0.1:{rport}/api/health", router)
        print("\n| search (1 client, 45 queries x %d) | p50 ms | p99 ms | ratio p50 | top 10 equal |" % rounds)
        print("|---|---:|---:|---:|---:|")
        for mode in ("bm25", "hybrid"):
            timed_queries(f"http://127.0.0.1:{sport}", queries[:5], mode, 1)  # warm both
            timed_queries(f"http://127.0.0.1:{rport}", queries[:5], mode, 1)
            s50, s99, stop = timed_queries(f"http://127.0.0.1:{sport}", queries, mode, rounds)
            r50, r99, rtop = timed_queries(f"http://127.0.0.1:{rport}", queries, mode, rounds)
            same = sum(stop[q] == rtop[q] for q in queries)
            print(f"| {mode}: clinsearch serve | {s50:.1f} | {s99:.1f} | 1.00x | |")
            print(f"| {mode}: clinsearch.ray serve, 3 shards | {r50:.1f} | {r99:.1f} | {r50 / s50:.2f}x | {same}/{len(queries)} |")
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["ray", "stop", "--force"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
