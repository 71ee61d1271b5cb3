"""``python -m clinsearch.ray ingest|serve``: see :mod:`clinsearch.ray`."""

from __future__ import annotations

import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("ingest", "serve"):
        print("usage: python -m clinsearch.ray {ingest,serve} ... (--help after either)", file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "ingest":
        from .ingest import main as run
    else:
        from .serve import main as run
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
