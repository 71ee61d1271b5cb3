"""clinsearch on a Ray cluster.

* ``python -m clinsearch.ray ingest``: Ray Data reads the notes, encoder actors (one per GPU or
  CPU worker) embed them, and one writer actor per shard stores them in an ordinary clinsearch
  data directory (``DIR/shard-000``, ...), each openable by ``clinsearch serve``.
* ``python -m clinsearch.ray serve``: see :mod:`clinsearch.ray.serve`.

Both connect to the cluster ``RAY_ADDRESS`` names (as Ray's own tools do); without one they
start a private single-node cluster (Ray's servers listen on every interface: see the README's
"Ray does not stay on loopback by itself"). The model comes from ``--model`` or
``CLINSEARCH_MODEL``.
"""

from __future__ import annotations

import os

__all__ = ["connect", "shard_dirs", "SHARD_PREFIX", "add_model_args", "model_missing"]

SHARD_PREFIX = "shard-"


def shard_dirs(out: str, shards: int) -> list[str]:
    """The data directory of each shard under ``out``."""
    return [os.path.join(out, f"{SHARD_PREFIX}{i:03d}") for i in range(shards)]


def connect():
    """Joins the cluster of ``RAY_ADDRESS``, or starts a private one-node cluster (no
    dashboard, no usage reporting). Ray resolves 127.0.0.1 to the machine's address and
    listens on every interface: keep it to loopback with a network namespace
    (``scripts/in_loopback_netns.sh``) where that matters."""
    import ray

    if ray.is_initialized():
        return ray
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = os.environ.get("RAY_ADDRESS")
    # Workers' own output stays in the cluster's logs: the driver's output is the report.
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    return ray


def add_model_args(p) -> None:
    """The model and window options both commands take (argparse)."""
    p.add_argument("--model", default=os.environ.get("CLINSEARCH_MODEL"), help="model folder or Hub id (CLINSEARCH_MODEL)")
    p.add_argument("--window", type=int, help="tokens per window (the data directory's)")
    p.add_argument("--stride", type=int, help="tokens windows overlap by")
    p.add_argument("--window-context", dest="window_context", help="what each window is embedded with")


def model_missing(args) -> bool:
    """True (having said so) when neither --model nor CLINSEARCH_MODEL names the model."""
    if args.model:
        return False
    import sys

    print("error: --model (or CLINSEARCH_MODEL) names the model", file=sys.stderr)
    return True
