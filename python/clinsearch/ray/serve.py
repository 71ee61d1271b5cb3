"""Sharded serving on Ray Serve: ``python -m clinsearch.ray serve``.

    python -m clinsearch.ray serve --shards DIR --model M --addr 127.0.0.1:PORT

serves the shard data directories that ``python -m clinsearch.ray ingest --out DIR`` wrote
(``DIR/shard-000``, ...) as one collection, with the HTTP search API and the browser UI of
``clinsearch serve`` in front::

    browser / client ──HTTP──► Serve proxy (127.0.0.1:PORT, head node only)
                                   │
                                Router (ingress: /api/search, /api/stats, /api/shards, UI)
                                   │  embeds the query once, then four steps, each a call
                                   │  to every shard, with a deadline
                 ┌─────────────────┼─────────────────┐
             Shard shard-000   Shard shard-001   Shard shard-002   (one replica each:
             (its Searcher)    (its Searcher)    (its Searcher)     a store opens once)

The ranking is exact, not an approximation of one directory holding every note
(``clinsearch.search.shards`` in the Rust library says how): the router sums the shards'
collection statistics (abbreviation co-occurrence counts, then BM25's N, field lengths and
document frequencies, as Elasticsearch's DFS mode does), every shard scores its candidates
with the sums, the router merges the candidate lists by score, and every shard fuses the
same merged lists and hydrates the hits of its own notes; the router puts the page together
by rank. Filters, snippets, patient grouping and paging are the single-node search's.

A shard that fails or misses the deadline (``--shard-timeout``) is left out of the rest of
that request: the reply says so (``"shards": {"total": 3, "answered": 2, "missing": [...]}``)
and ranks the other shards' notes as one collection. Serve restarts a replica whose process
died, and the next requests find it again.

What it does not do: access keys (the router listens on loopback only and refuses any other
address: put the single-node server's key checks in front before exposing it), the write,
evaluation, tuning and fill-mask endpoints (one directory's ``clinsearch serve`` has them),
facets and export. Each shard's access audit records the notes that shard disclosed to each
search, as ``clinsearch serve`` records them; no query text is logged (Serve's access log is
turned off: a GET's query string would carry it).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import signal
import sys
import time

import clinsearch
from clinsearch import _native

from . import SHARD_PREFIX, add_model_args, connect, model_missing

APP_NAME = "clinsearch"


def _error(status: int, code: str, message: str):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


class Shard:
    """One shard's data directory and searcher: the four steps of a sharded search."""

    def __init__(self, path: str, model: str, encoder_kwargs: dict):
        self.path = path
        self.name = os.path.basename(os.path.normpath(path))
        # The encoder is the data directory's identity check (a shard built by another
        # model is refused); queries are embedded by the router.
        self.encoder = clinsearch.Encoder(model, **encoder_kwargs)
        self.data = clinsearch.DataDir(path, self.encoder)
        self.searcher = _native.Searcher(self.data._inner)

    def info(self) -> dict:
        st = self.data.stats()
        return {"shard": self.name, "pid": os.getpid(), "notes": st["notes"], "chunks": st["chunks"], "model": st.get("model")}

    def cooccurrence(self, request: str) -> str:
        return self.searcher.shard_cooccurrence(request)

    def statistics(self, request: str, collection: str) -> str:
        return self.searcher.shard_statistics(request, collection)

    def candidates(self, request: str, collection: str, vector) -> str:
        return self.searcher.shard_candidates(request, collection, vector)

    def search(self, request: str, collection: str, candidates: str, vector) -> str:
        return self.searcher.search_merged(request, collection, candidates, vector, "ray-serve")

    def check_health(self) -> None:
        # Serve calls this periodically; an unreadable store restarts the replica.
        self.data.stats()


class Router:
    """The HTTP front: the search API and the UI over every shard."""

    def __init__(self, shards: list, names: list, model: str, encoder_kwargs: dict, timeout: float):
        self.shards = shards
        self.names = names
        self.timeout = timeout
        self.encoder = clinsearch.Encoder(model, **encoder_kwargs)

    async def _all(self, alive: list, call) -> tuple:
        """Calls every shard in ``alive`` at once (``call(handle)`` starts the call); returns
        the answers of those that answered in time, and which did."""

        async def one(i):
            resp = call(self.shards[i])
            try:
                return i, await asyncio.wait_for(resp, self.timeout)
            except Exception as e:  # a dead replica, a deadline, an error inside the shard
                try:
                    resp.cancel()
                except Exception:
                    pass
                return i, e

        got = await asyncio.gather(*(one(i) for i in alive))
        answered, answers, failures = [], [], []
        for i, r in got:
            if isinstance(r, Exception):
                failures.append((i, r))
            else:
                answered.append(i)
                answers.append(r)
        # A mistake in the request is the caller's, whichever shard noticed it first.
        for _, e in failures:
            if isinstance(e, ValueError):
                raise ValueError(str(e).split("ValueError: ")[-1].strip().splitlines()[0])
        return answered, answers

    async def search(self, request: str) -> dict:
        t0 = time.perf_counter()
        plan = json.loads(_native.search_plan(request))  # ValueError: a bad request
        vector = None
        embed_ms = 0.0
        if plan["needs_vector"]:
            t = time.perf_counter()
            loop = asyncio.get_running_loop()
            emb = await loop.run_in_executor(None, lambda: self.encoder.embed([plan["embedding_text"]]))
            vector = [float(x) for x in emb[0]]
            embed_ms = (time.perf_counter() - t) * 1e3
        alive = list(range(len(self.shards)))
        cooc = "{}"
        if plan["asks_collection"]:
            alive, parts = await self._all(alive, lambda h: h.cooccurrence.remote(request))
            cooc = _native.sum_statistics("[" + ",".join(parts) + "]")
        alive, parts = await self._all(alive, lambda h: h.statistics.remote(request, cooc))
        # Step 2 does not repeat step 1's counts: the collection is both sums.
        collection = _native.sum_statistics("[" + ",".join([cooc, *parts]) + "]")
        alive, parts = await self._all(alive, lambda h: h.candidates.remote(request, collection, vector))
        merged = _native.merge_candidates("[" + ",".join(parts) + "]")
        alive, parts = await self._all(alive, lambda h: h.search.remote(request, collection, merged, vector))
        reply = _merge_replies([json.loads(p) for p in parts])
        if reply is None:
            return {"error": "no shard answered"}
        reply["timings"]["embed_ms"] = embed_ms
        reply["took_ms"] = (time.perf_counter() - t0) * 1e3
        reply["shards"] = {
            "total": len(self.shards),
            "answered": len(alive),
            "missing": [self.names[i] for i in range(len(self.shards)) if i not in alive],
        }
        return reply

    async def __call__(self, http):
        from starlette.responses import JSONResponse, Response

        path, method = http.url.path, http.method
        try:
            if path == "/api/search":
                if method == "GET":
                    request = json.dumps([[k, v] for k, v in http.query_params.multi_items()])
                elif method == "POST":
                    body = await http.body()
                    try:
                        request = json.dumps(json.loads(body))
                    except json.JSONDecodeError as e:
                        return _error(400, "invalid_json", f"the body is not JSON: {e.msg} at column {e.colno}")
                else:
                    return _error(405, "method_not_allowed", f"{method} is not allowed on {path}")
                reply = await self.search(request)
                if "error" in reply:
                    return _error(503, "no_shard", "no shard answered in time")
                return JSONResponse(reply)
            if method != "GET":
                return _error(405, "method_not_allowed", f"{method} is not allowed on {path}")
            if path == "/api/health":
                alive, _ = await self._all(list(range(len(self.shards))), lambda h: h.info.remote())
                ok = len(alive) == len(self.shards)
                return JSONResponse(
                    {"status": "ok" if ok else "degraded", "shards": {"total": len(self.shards), "answered": len(alive)}},
                    status_code=200 if ok else 503,
                )
            if path == "/api/shards":
                return JSONResponse(await self._shards())
            if path == "/api/stats":
                infos = [s for s in (await self._shards())["shards"] if s.get("answered")]
                model = next((s["model"] for s in infos if s.get("model")), None)
                return JSONResponse({
                    "notes": sum(s["notes"] for s in infos),
                    "chunks": sum(s["chunks"] for s in infos),
                    "model": model,
                    "shards": {"total": len(self.shards), "answered": len(infos)},
                })
            if path == "/api/whoami":
                return JSONResponse({"principal": "ray-serve", "role": "reader", "restricted": False})
            name = {"/": "index.html", "/assets/app.js": "app.js", "/assets/style.css": "style.css"}.get(path)
            if name:
                content_type, text = _native.web_asset(name)
                headers = {"content-security-policy": _CSP, "x-content-type-options": "nosniff",
                           "referrer-policy": "no-referrer", "cache-control": "no-store"}
                return Response(text, media_type=content_type, headers=headers)
            if path == "/favicon.ico":
                return Response(status_code=204)
            return _error(404, "not_found", f"{path} is not served by the sharded router (clinsearch serve on one data directory has it)")
        except ValueError as e:
            return _error(400, "invalid_request", str(e))

    async def _shards(self) -> dict:
        out = []

        async def one(i):
            resp = self.shards[i].info.remote()
            try:
                info = await asyncio.wait_for(resp, self.timeout)
                return {**info, "answered": True}
            except Exception as e:
                try:
                    resp.cancel()
                except Exception:
                    pass
                return {"shard": self.names[i], "answered": False, "error": type(e).__name__}

        out = await asyncio.gather(*(one(i) for i in range(len(self.shards))))
        return {"total": len(self.shards), "answered": sum(1 for s in out if s["answered"]), "shards": list(out)}


#: The UI's content security policy, as `clinsearch serve` sends it.
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def _merge_replies(replies: list):
    """The shards' replies to step 4 as one: each ranking's hits from every shard, once each,
    by rank (every shard ranked the same merged lists; each hydrated its own notes)."""
    if not replies:
        return None
    out = replies[0]
    for r, ranking in enumerate(out["rankings"]):
        seen = {}
        for rep in replies:
            for hit in rep["rankings"][r]["hits"]:
                seen.setdefault(hit["id"], hit)
        ranking["hits"] = sorted(seen.values(), key=lambda h: h["rank"])
    timings = out["timings"]
    for rep in replies[1:]:
        for k, v in rep["timings"].items():
            timings[k] = max(timings.get(k, 0.0), v)
    return out


def shard_paths(folder: str) -> list:
    """The shard directories under ``folder`` (``shard-000``, ...), in order."""
    if not os.path.isdir(folder):
        raise SystemExit(f"{folder}: no such folder")
    names = sorted(n for n in os.listdir(folder) if n.startswith(SHARD_PREFIX) and os.path.isdir(os.path.join(folder, n)))
    if not names:
        raise SystemExit(f"{folder}: no shard directories ({SHARD_PREFIX}000, ...); write them with python -m clinsearch.ray ingest --out {folder}")
    return [os.path.abspath(os.path.join(folder, n)) for n in names]


def _loopback(addr: str) -> tuple:
    host, _, port = addr.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        ip = ipaddress.ip_address("127.0.0.1" if host == "localhost" else host)
    except ValueError:
        raise SystemExit(f"--addr {addr}: not an address (HOST:PORT)")
    if not ip.is_loopback:
        raise SystemExit(
            f"--addr {addr}: the sharded router has no access keys, so it listens on loopback only "
            "(127.0.0.1); put an authenticating proxy in front to expose it"
        )
    if not port.isdigit():
        raise SystemExit(f"--addr {addr}: the port must be a number")
    return str(ip), int(port)


def deploy(args) -> dict:
    """Starts Serve on the cluster and deploys the router and one deployment per shard;
    returns what was deployed."""
    ray = connect()
    from ray import serve
    from ray.serve.config import HTTPOptions

    host, port = _loopback(args.addr)
    paths = shard_paths(args.shards)
    names = [os.path.basename(p) for p in paths]
    ekw = {"device": "cpu", "dtype": args.dtype}
    for k in ("window", "stride", "window_context"):
        v = getattr(args, k)
        if v is not None:
            ekw[k] = v
    logging_config = _logging_config()
    serve.start(
        http_options=HTTPOptions(host=host, port=port),
        proxy_location="HeadOnly",
        **({"logging_config": logging_config} if logging_config is not None else {}),
    )
    common = {"health_check_period_s": args.health_check_period, "health_check_timeout_s": 30}
    if logging_config is not None:
        common["logging_config"] = logging_config
    shard_dep = serve.deployment(Shard)
    handles = [
        shard_dep.options(
            name=name, num_replicas=1, ray_actor_options={"num_cpus": args.cpus_per_shard}, **common
        ).bind(p, args.model, ekw)
        for name, p in zip(names, paths)
    ]
    router = serve.deployment(Router).options(
        name="router", num_replicas=1, ray_actor_options={"num_cpus": args.cpus_router}, **common
    )
    app = router.bind(handles, names, args.model, {**ekw, "device": args.device}, args.shard_timeout)
    serve.run(app, name=APP_NAME, route_prefix="/", **({"logging_config": logging_config} if logging_config is not None else {}))
    return {"url": f"http://{host}:{port}/", "shards": names}


def _logging_config():
    """Serve's logging with the access log off (a GET's query string is note-finding text)."""
    try:
        from ray.serve.schema import LoggingConfig
    except ImportError:
        return None
    return LoggingConfig(enable_access_log=False)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m clinsearch.ray serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", required=True, help="folder of shard data directories (ingest --out)")
    add_model_args(p)
    p.add_argument("--addr", default="127.0.0.1:8080", help="HOST:PORT of the HTTP front (loopback only)")
    p.add_argument("--shard-timeout", type=float, default=5.0, help="seconds a shard has for each step of a search")
    p.add_argument("--health-check-period", type=float, default=5.0, help="seconds between Serve's health checks of a replica")
    p.add_argument("--cpus-per-shard", type=float, default=0.5)
    p.add_argument("--cpus-router", type=float, default=0.5)
    p.add_argument("--device", default="cpu", help="where the router embeds queries (cpu or cuda)")
    p.add_argument("--dtype", default="f32")
    p.add_argument("--json", action="store_true", help="print what was deployed as one JSON line once it serves")
    return p


def main(argv) -> int:
    args = parser().parse_args(argv)
    if model_missing(args):
        return 2
    deployed = deploy(args)
    if args.json:
        print(json.dumps(deployed), flush=True)
    else:
        print(f"serving {len(deployed['shards'])} shards on {deployed['url']} (Ctrl-C stops)", file=sys.stderr, flush=True)
    stopped = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(1))
    try:
        while not stopped:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    from ray import serve

    serve.delete(APP_NAME)
    return 0
