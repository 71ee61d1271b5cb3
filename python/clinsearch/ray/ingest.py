"""Distributed ingest on Ray Data: ``python -m clinsearch.ray ingest``.

    python -m clinsearch.ray ingest --shards 3 --out shards/ --model M [--workers W]
        [--num-gpus-per-worker G] notes.jsonl more.csv table.parquet

The pipeline, streaming end to end:

1. Ray Data reads the inputs (JSON lines as text, so every note object arrives exactly as
   written; CSV and Parquet through Ray's readers, one column per field).
2. ``map_batches`` with a callable class (:class:`Embedder`): W actors, each holding one
   encoder (on a GPU each with ``--num-gpus-per-worker``), embed the notes exactly as
   ``clinsearch ingest`` does and assign each note its shard by a stable hash of its
   ``patient_id`` (a patient's notes stay together; a note without one hashes by id).
3. One writer actor per shard (:class:`ShardWriter`) stores what is routed to it in an
   ordinary clinsearch data directory, ``OUT/shard-000`` ..., through the same import path
   as ``clinsearch ingest --npy`` (one sled transaction and index commit per batch, durable
   before the call returns).

Acknowledgement and idempotence are single-node ingest's: a batch is acknowledged (counted
in the report) once its shard has it durably, and notes are upserts by id, so re-running an
ingest converges and a batch redone after a killed worker (Ray restarts the actor and
retries its task) replaces what it wrote rather than adding to it. A writer's calls run in
the order they were sent, so a note given twice ends as its last version, as on one node.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections import defaultdict

import numpy as np

import clinsearch

from . import add_model_args, connect, model_missing, shard_dirs

#: Fault injection for the tests: a path; the first embedding actor to reach its second
#: batch creates the file and kills its own process (once per path), as a crashed worker.
FAILPOINT_ENV = "CLINSEARCH_RAY_KILL_ONCE"


def _encoder_kwargs(args) -> dict:
    kw = {"device": args.device, "dtype": args.dtype, "batch_size": args.encoder_batch, "max_windows": args.max_windows}
    for k in ("window", "stride", "window_context"):
        v = getattr(args, k)
        if v is not None:
            kw[k] = v
    return kw


class Embedder:
    """A Ray Data actor: loads the encoder once, then embeds batches of notes."""

    def __init__(self, model: str, encoder_kwargs: dict, shards: int, kill_once=None):
        self.encoder = clinsearch.Encoder(model, **encoder_kwargs)
        self.kill_once = kill_once
        self.shards = shards
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.batches = 0

    def __call__(self, batch: dict) -> dict:
        self.batches += 1
        marker = self.kill_once
        if marker and self.batches == 2:
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.close(fd)
                os._exit(1)
            except FileExistsError:
                pass
        t = time.perf_counter()
        notes, origins = _notes_of(batch)
        good = [i for i, n in enumerate(notes) if isinstance(n, dict)]
        embedded, vectors = self.encoder.embed_notes([notes[i] for i in good]) if good else ([], None)
        shard_ids = clinsearch.shards_of([notes[i] for i in good], self.shards) if good else []
        out_note, out_vec, out_shard, out_err = [], [], [], []
        by_index = dict(zip(good, zip(embedded, shard_ids)))
        for i, origin in enumerate(origins):
            if i not in by_index:
                out_note.append("")
                out_vec.append(b"")
                out_shard.append(-1)
                out_err.append(f"{origin}: {notes[i]}")
                continue
            note, shard = by_index[i]
            if "error" in note:
                out_note.append("")
                out_vec.append(b"")
                out_shard.append(-1)
                out_err.append(f"{origin}: {note['error'].split(': ', 1)[-1]}")
                continue
            rows = [c.pop("row") for c in note["chunks"]]
            out_note.append(json.dumps(note))
            out_vec.append(np.ascontiguousarray(vectors[rows], dtype=np.float32).tobytes())
            out_shard.append(int(shard))
            out_err.append("")
        seconds = time.perf_counter() - t
        n = len(origins)
        return {
            "note": np.array(out_note, dtype=object),
            "vectors": np.array(out_vec, dtype=object),
            "shard": np.array(out_shard, dtype=np.int64),
            "error": np.array(out_err, dtype=object),
            "worker": np.array([self.worker] * n, dtype=object),
            # The batch's embedding time, spread over its notes (summed per worker later).
            "seconds": np.full(n, seconds / max(n, 1)),
        }


def _notes_of(batch: dict):
    """The notes of a batch (dicts; a string for a line that is not a note object) and where
    each came from (for messages: the file, never the note's text)."""
    notes, origins = [], []
    if "line" in batch:
        for line, path in zip(batch["line"], batch["path"]):
            origins.append(str(path))
            try:
                v = json.loads(line)
            except json.JSONDecodeError as e:
                notes.append(f"not a JSON object ({e.msg} at column {e.colno})")
                continue
            notes.append(v if isinstance(v, dict) else "not a JSON object")
    else:
        cols = [c for c in batch if c != "path"]
        size = len(batch[cols[0]]) if cols else 0
        for i in range(size):
            row = {}
            for c in cols:
                v = batch[c][i]
                row[c] = v.item() if isinstance(v, np.generic) else v
            notes.append(row)
            origins.append(str(batch["path"][i]) if "path" in batch else "input")
    return notes, origins


class ShardWriter:
    """One shard's data directory, written by one actor (sled allows one writer process)."""

    def __init__(self, path: str, model: str, encoder_kwargs: dict, vector_kwargs: dict):
        os.makedirs(path, exist_ok=True)
        self.encoder = clinsearch.Encoder(model, **encoder_kwargs)
        self.data = clinsearch.DataDir(path, self.encoder, **vector_kwargs)

    def write(self, notes_json: list, vector_bytes: list) -> dict:
        notes, parts, row = [], [], 0
        dim = self.encoder.dim
        for nj, vb in zip(notes_json, vector_bytes):
            note = json.loads(nj)
            v = np.frombuffer(vb, dtype=np.float32).reshape(-1, dim)
            for c in note["chunks"]:
                c["row"] = row
                row += 1
            notes.append(note)
            parts.append(v)
        if not notes:
            return {"notes": 0, "chunks": 0, "errors": []}
        report = self.data.import_chunks(notes, np.concatenate(parts), batch_size=len(notes))
        return {"notes": report["notes"], "chunks": report["chunks"], "errors": report["errors"]}

    def stats(self) -> dict:
        return self.data.stats()


def _dataset(inputs: list):
    """One Ray dataset over every input, by extension: JSON lines as text (exact objects),
    CSV and Parquet through Ray's readers."""
    import ray.data as rd

    parts = []
    for p in inputs:
        if not os.path.exists(p):
            raise SystemExit(f"{p}: no such file or folder")
        low = p.lower()
        if low.endswith((".jsonl", ".json", ".ndjson")):
            ds = rd.read_text(os.path.abspath(p), include_paths=True, drop_empty_lines=True)
            ds = ds.rename_columns({"text": "line"})
        elif low.endswith(".csv"):
            ds = rd.read_csv(os.path.abspath(p), include_paths=True)
        elif low.endswith(".parquet") or os.path.isdir(p):
            ds = rd.read_parquet(os.path.abspath(p), include_paths=True)
        else:
            raise SystemExit(f"{p}: not JSON lines (.jsonl), CSV (.csv) or Parquet (.parquet)")
        parts.append(ds)
    ds = parts[0]
    if len(parts) > 1:
        ds = ds.union(*parts[1:])
    return ds


def _check_cpus(cluster_cpus: float, args) -> None:
    """Refuses a plan that cannot run: the encoder actors hold their CPUs for the whole
    ingest, and Ray Data's read tasks need a CPU of their own, so actors that take every CPU
    of the cluster wait forever for input (measured: a 2-CPU cluster with 2 one-CPU actors
    hangs with both idle)."""
    needed = args.workers * args.cpus_per_worker
    if needed > cluster_cpus - 1:
        raise SystemExit(
            f"the cluster has {cluster_cpus:g} CPUs: {args.workers} encoder actors x {args.cpus_per_worker:g} CPUs "
            f"leave none for reading the inputs; use fewer --workers or a smaller --cpus-per-worker"
        )


def run(args) -> dict:
    ray = connect()
    _check_cpus(ray.cluster_resources().get("CPU", 0), args)
    model = args.model
    ekw = _encoder_kwargs(args)
    wkw = {**ekw, "device": "cpu"}  # writers only need the model's identity
    vkw = {k: getattr(args, k) for k in ("quantization", "m", "ef_construction", "ef_search") if getattr(args, k) is not None}
    dirs = shard_dirs(args.out, args.shards)
    os.makedirs(args.out, exist_ok=True)
    Writer = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(ShardWriter)
    writers = [Writer.remote(d, model, wkw, vkw) for d in dirs]

    ds = _dataset(args.inputs)
    embedded = ds.map_batches(
        Embedder,
        fn_constructor_kwargs={
            "model": model,
            "encoder_kwargs": ekw,
            "shards": args.shards,
            # Read by the driver: the actors of a running cluster do not see its environment.
            "kill_once": os.environ.get(FAILPOINT_ENV),
        },
        batch_size=args.batch_size,
        batch_format="numpy",
        concurrency=args.workers,
        num_gpus=args.num_gpus_per_worker or None,
        num_cpus=args.cpus_per_worker,
    )

    started = time.perf_counter()
    per_worker = defaultdict(lambda: [0, 0.0])
    stored = [0] * args.shards
    chunks = [0] * args.shards
    errors: list = []
    pending = []

    def settle(block: bool):
        nonlocal pending
        while pending and (block or len(pending) > 2 * args.shards):
            done, pending = ray.wait(pending, num_returns=1)
            ref = done[0]
            rep = ray.get(ref)
            s = shard_of_ref.pop(ref)
            stored[s] += rep["notes"]
            chunks[s] += rep["chunks"]
            errors.extend(rep["errors"])

    shard_of_ref: dict = {}
    last = started
    for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
        groups = defaultdict(lambda: ([], []))
        for note, vec, shard, err, worker, secs in zip(
            batch["note"], batch["vectors"], batch["shard"], batch["error"], batch["worker"], batch["seconds"]
        ):
            per_worker[worker][0] += 1
            per_worker[worker][1] += float(secs)
            if err:
                errors.append(err)
                continue
            groups[int(shard)][0].append(note)
            groups[int(shard)][1].append(vec)
        for s, (notes, vecs) in groups.items():
            ref = writers[s].write.remote(notes, vecs)
            shard_of_ref[ref] = s
            pending.append(ref)
        settle(False)
        now = time.perf_counter()
        if not args.quiet and now - last >= 5:
            last = now
            done = sum(stored)
            print(f"stored {done} notes, {done / (now - started):.1f} notes/s", file=sys.stderr)
    settle(True)
    seconds = time.perf_counter() - started
    stats = ray.get([w.stats.remote() for w in writers])
    report = {
        "shards": [
            {"dir": d, "notes": st["notes"], "chunks": st["chunks"], "stored_now": n}
            for d, st, n in zip(dirs, stats, stored)
        ],
        "notes": sum(stored),
        "chunks": sum(chunks),
        "errors": errors,
        "seconds": seconds,
        "notes_per_second": sum(stored) / max(seconds, 1e-9),
        "workers": {
            w: {"notes": n, "embed_seconds": s, "notes_per_second": n / max(s, 1e-9)}
            for w, (n, s) in sorted(per_worker.items())
        },
    }
    for w in writers:
        ray.kill(w)
    return report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m clinsearch.ray ingest", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="JSON lines, CSV or Parquet files of notes")
    p.add_argument("--shards", type=int, required=True, help="number of shards (data directories)")
    p.add_argument("--out", required=True, help="folder of the shard data directories (OUT/shard-000, ...)")
    add_model_args(p)
    p.add_argument("--workers", type=int, default=1, help="encoder actors (one per GPU with --num-gpus-per-worker)")
    p.add_argument("--num-gpus-per-worker", type=float, default=0, help="GPUs per encoder actor (0: CPU)")
    p.add_argument("--cpus-per-worker", type=float, default=1, help="CPUs per encoder actor")
    p.add_argument("--batch-size", type=int, default=64, help="notes per embedding batch")
    p.add_argument("--encoder-batch", type=int, default=32, help="sequences per forward pass")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda with GPUs per worker, else cpu)")
    p.add_argument("--dtype", default="f32")
    p.add_argument("--max-windows", dest="max_windows", type=int, default=256, help="the most windows embedded of one note")
    p.add_argument("--quantization", choices=["f32", "int8"])
    p.add_argument("--m", type=int)
    p.add_argument("--ef-construction", dest="ef_construction", type=int)
    p.add_argument("--ef-search", dest="ef_search", type=int)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv) -> int:
    args = parser().parse_args(argv)
    if model_missing(args):
        return 2
    if args.shards < 1:
        print("error: --shards must be at least 1", file=sys.stderr)
        return 2
    if args.device is None:
        args.device = "cuda" if args.num_gpus_per_worker else "cpu"
    report = run(args)
    if args.json:
        print(json.dumps(report))  # one line, the last of standard output
    else:
        for e in report["errors"]:
            print(f"skipped {e}", file=sys.stderr)
        print(
            f"ingested {report['notes']} notes ({report['chunks']} chunks) into {len(report['shards'])} shards "
            f"in {report['seconds']:.1f}s: {report['notes_per_second']:.1f} notes/s",
            file=sys.stderr,
        )
        for w, r in report["workers"].items():
            print(f"  worker {w}: {r['notes']} notes, {r['notes_per_second']:.1f} notes/s embedding", file=sys.stderr)
        for s in report["shards"]:
            print(f"  {s['dir']}: {s['notes']} notes, {s['chunks']} chunks", file=sys.stderr)
    return 0
