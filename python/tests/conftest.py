"""Shared fixtures of the Python package's tests: the repository's tiny model, the sample
corpus, and the clinsearch binary that `cargo test` built (the peer the package must equal)."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "fixtures" / "tiny-mlm-uncased"
NOTES = REPO / "sample_corpus" / "notes.jsonl"
# The small windows the Rust tests use with the tiny fixtures.
TINY_OPTS = {"window": 24, "stride": 4}
CLI_TINY = ["--model", str(TINY), "--window", "24", "--stride", "4"]


def binary() -> pathlib.Path:
    """The CLI to compare with: CLINSEARCH_BIN, else the debug build `make test` made."""
    env = os.environ.get("CLINSEARCH_BIN")
    for p in [env] if env else [REPO / "target" / "debug" / "clinsearch", REPO / "target" / "release" / "clinsearch"]:
        if p and pathlib.Path(p).is_file():
            return pathlib.Path(p)
    if os.environ.get("CLINSEARCH_REQUIRE_TEST_DEPS"):
        pytest.fail("no clinsearch binary (cargo build, or set CLINSEARCH_BIN)")
    pytest.skip("no clinsearch binary (cargo build, or set CLINSEARCH_BIN)")


def run_cli(*args: str, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(binary()), *args], capture_output=True, text=True, timeout=600, **kw)
    assert r.returncode == 0, f"clinsearch {' '.join(args)}: {r.stderr}"
    return r


def sample_notes(n: int | None = None) -> list:
    with open(NOTES) as f:
        notes = [json.loads(line) for line in f if line.strip()]
    return notes[:n] if n else notes


@pytest.fixture(scope="session")
def encoder():
    import clinsearch

    return clinsearch.Encoder(str(TINY), **TINY_OPTS)


@pytest.fixture(scope="session")
def cli_data(tmp_path_factory):
    """sample_corpus ingested by the CLI with the tiny model (a pristine copy per test)."""
    d = tmp_path_factory.mktemp("cli") / "data"
    run_cli("ingest", *CLI_TINY, "--data", str(d), "--quiet", str(NOTES))
    return d


@pytest.fixture
def cli_copy(cli_data, tmp_path):
    d = tmp_path / "data"
    shutil.copytree(cli_data, d)
    return d
