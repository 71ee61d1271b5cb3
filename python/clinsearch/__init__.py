"""clinsearch from Python: the Rust library (encoder, data directory, search) through PyO3.

    import clinsearch
    enc = clinsearch.Encoder("models/all-MiniLM-L6-v2")
    data = clinsearch.DataDir("data", enc)
    data.add([{"id": "n1", "text": "Chest pain radiating to the left arm."}])
    hits = clinsearch.Searcher(data).search("chest pain", mode="hybrid", k=5)

Every call that embeds, reads or writes releases the GIL. Searches answer the same fields as
``POST /api/search`` and are recorded in the data directory's access audit, as the server's
are (principal ``python:$USER``).
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from . import _native

__all__ = ["Encoder", "DataDir", "Searcher", "shard_of", "shards_of", "__version__"]
__version__ = _native.__version__


def _notes(notes: Iterable[Mapping[str, Any]]) -> str:
    out = []
    for n in notes:
        # Missing values from dataframes and Arrow tables arrive as None (or NaN): absent.
        out.append({k: v for k, v in dict(n).items() if not _missing(v)})
    return json.dumps(out, default=_jsonable)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v)


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"{type(v).__name__} is not JSON serialisable")


class Encoder:
    """A BERT encoder: a model folder, or a Hub id (``org/name[@revision]``) through the HF cache.

    ``data``: take the encoder settings (window, stride, window context) recorded by a data
    directory, so that new vectors compare with the stored ones. ``max_windows``: the most
    windows embedded of one text (256, as ``clinsearch ingest``; None: no cap).
    """

    def __init__(
        self,
        model: str,
        *,
        device: str = "cpu",
        dtype: str = "f32",
        window: Optional[int] = None,
        stride: Optional[int] = None,
        window_context: Optional[str] = None,
        batch_size: int = 32,
        normalize: bool = True,
        max_windows: Optional[int] = 256,
        data: Optional[str] = None,
    ) -> None:
        self._inner = _native.Encoder(
            str(model),
            device=device,
            dtype=dtype,
            window=window,
            stride=stride,
            window_context=window_context,
            batch_size=batch_size,
            normalize=normalize,
            max_windows=max_windows,
            data=None if data is None else str(data),
        )

    @property
    def dim(self) -> int:
        return self._inner.dim

    @property
    def info(self) -> dict:
        """What ``clinsearch model info`` prints."""
        return json.loads(self._inner.info_json())

    @property
    def identity(self) -> dict:
        """What a data directory records of this model."""
        return json.loads(self._inner.identity_json())

    def embed(self, texts: Sequence[str], windows: bool = False):
        """One float32 vector per text (truncated to one window), shape ``(len(texts), dim)``.

        With ``windows=True``, every window of every text: ``(vectors, spans)`` where
        ``vectors`` is ``(windows, dim)`` and ``spans[i] = (text_index, char_start, char_end)``.
        """
        texts = [str(t) for t in texts]
        if windows:
            return self._inner.embed_windows(texts)
        return self._inner.embed(texts)

    def embed_notes(self, notes: Iterable[Mapping[str, Any]]):
        """Embeds notes as ``clinsearch ingest`` does; returns ``(notes, vectors)`` ready for
        :meth:`DataDir.import_chunks`: each note with its ``chunks`` (char spans and ``row``
        of ``vectors``), or with ``error`` when it cannot be embedded."""
        notes = list(notes)
        chunk_map, vectors = self._inner.embed_notes(_notes(notes))
        out = []
        for note, m in zip(notes, json.loads(chunk_map)):
            n = dict(note)
            n.update(m)
            out.append(n)
        return out, vectors

    def tokenize(self, text: str) -> dict:
        """``{"ids", "tokens", "offsets"}`` of ``text`` (byte offsets; no special tokens)."""
        ids, tokens, offsets = self._inner.tokenize(text)
        return {"ids": ids, "tokens": tokens, "offsets": offsets}

    def fill_mask(self, text: str, top_k: int = 5) -> list:
        """The ``top_k`` most likely tokens for each ``[MASK]`` (needs an MLM head)."""
        return json.loads(self._inner.fill_mask(text, top_k))


class DataDir:
    """A data directory, opened (or created) for ``encoder``'s model: a directory built by
    another model is refused. One process holds it at a time.

    ``quantization`` (``"f32"`` or ``"int8"``), ``m``, ``ef_construction`` and ``ef_search``
    choose the vector index of a new directory (an existing one keeps what it recorded).
    """

    def __init__(
        self,
        path: str,
        encoder: Encoder,
        *,
        quantization: Optional[str] = None,
        m: Optional[int] = None,
        ef_construction: Optional[int] = None,
        ef_search: Optional[int] = None,
    ) -> None:
        self.encoder = encoder
        self._inner = _native.DataDir(
            str(path),
            encoder._inner,
            quantization=quantization,
            m=m,
            ef_construction=ef_construction,
            ef_search=ef_search,
        )

    @property
    def path(self) -> str:
        return str(self._inner.path)

    def import_chunks(self, notes: Iterable[Mapping[str, Any]], vectors, batch_size: int = 256) -> dict:
        """Stores notes whose vectors were computed elsewhere (``Encoder.embed_notes``, a GPU
        job): each note's ``chunks`` name rows of ``vectors`` (``{"char_start", "char_end",
        "row"}``), as ``clinsearch ingest --npy`` reads them. Upserts by id: importing the same
        notes again changes nothing. Returns the ingest report (``errors`` names each refused
        note as ``request:N: reason``)."""
        v = np.ascontiguousarray(vectors, dtype=np.float32)
        if v.ndim != 2:
            raise ValueError(f"vectors must be a 2-D matrix (chunks x dimensions), not {v.ndim}-D")
        return json.loads(self._inner.import_chunks(_notes(notes), v, batch_size))

    def add(self, notes: Iterable[Mapping[str, Any]], batch_size: int = 64) -> dict:
        """Stores notes, embedding those that carry no vectors (as ``clinsearch ingest``)."""
        return json.loads(self._inner.add(_notes(notes), batch_size))

    def delete(self, ids: Sequence[str]) -> int:
        return self._inner.delete([str(i) for i in ids])

    def stats(self) -> dict:
        """What ``clinsearch stats`` prints."""
        return json.loads(self._inner.stats_json())


class Searcher:
    """BM25, semantic and hybrid search over a :class:`DataDir`, with the HTTP API's answers."""

    def __init__(self, data: DataDir) -> None:
        self.data = data
        self._inner = _native.Searcher(data._inner)

    def search(
        self,
        q: str,
        mode: str = "hybrid",
        k: int = 10,
        filters: Optional[Mapping[str, Any]] = None,
        fusion: Optional[str] = None,
        **params: Any,
    ) -> dict:
        """Runs a search; ``filters`` (``patient_id``, ``note_type``, ``date_from``...) and
        ``params`` are the parameters of ``POST /api/search``. Returns its reply."""
        body = {"q": q, "mode": mode, "k": k, **params}
        if filters:
            body["filter"] = dict(filters)
        if fusion is not None:
            body["fusion"] = fusion
        return json.loads(self._inner.search(json.dumps(body, default=_jsonable)))


def shard_of(note: Mapping[str, Any], shards: int) -> int:
    """The shard of a note among ``shards``: a stable hash of its patient (so that a patient's
    notes stay together), or of its id when it has none (see :func:`shards_of`)."""
    return shards_of([note], shards)[0]


def shards_of(notes: Iterable[Mapping[str, Any]], shards: int) -> list:
    """The shard of each note: FNV-1a (64 bits) of ``patient:<patient_id>``, or of
    ``note:<id>`` for a note without a patient, modulo ``shards``. The patient and the id are
    read as the store reads them (top-level fields or ``metadata``), and the hash is the same
    in every process and Python version (Python's own ``hash`` of a string is not)."""
    if shards < 1:
        raise ValueError("shards must be at least 1")
    return _native.shards_of(_notes(notes), shards)
