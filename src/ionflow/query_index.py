"""A columnar copy of the summaries' query fields, kept in the database next to them.

Why: the embedded SecantusDB server answers a ``find`` by decoding every candidate document
(5 kB each) in Python before it sorts and limits, so a broad query over 10,000 summaries
takes 0.2–2 s however well indexed. This module keeps the flat query fields of all
summaries of a database as one compressed ``.npz`` blob (≈ 30 bytes per summary) in the
collection ``summaries_query_index``; a query reads that blob (cached per process while its
version is current), evaluates the filter and the sort with numpy, and fetches only the
page of full documents by ``_id``. The result is the same as the server's — same filter
semantics, same order, same tie-breaks (tested against the server path).

Freshness. :func:`ionflow.results.store_summary` (the only writer of summaries) increments
``version`` in the ``state`` document after every write; the columns record the version
they were built from. Columns of an older version are rebuilt by the next query (one
projection of the flat fields: ≈ 1–2 s for 10,000 summaries on SecantusDB). Code that
writes or deletes ``summaries`` directly must call :func:`touch` (a summary deleted
behind its back is noticed — the page fetch comes back short — and the server answers).

Only filters made of the operators :func:`ionflow.results.build_filter` emits are evaluated
here (equality, ``$gte``/``$gt``/``$lte``/``$lt``, ``$ne``, ``$in``, ``$all``, ``$regex`` with
``$options``, ``$and``) on the indexed fields; anything else — and collections with fewer
than :data:`MIN_DOCUMENTS` summaries, which the server answers quickly anyway — is left to
the server (:func:`find` returns None).
"""

from __future__ import annotations

import io
import json
import re
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from ionflow.names import QUERY_INDEX_COLLECTION as INDEX_COLLECTION

# INDEX_COLLECTION ("summaries_query_index") holds the ``state`` and ``columns`` documents.
STATE_ID = "state"
COLUMNS_ID = "columns"
#: Below this many summaries the server is fast enough; the columns are not used.
MIN_DOCUMENTS = 1000
#: Version of the blob layout (a blob of another format is rebuilt).
FORMAT = 2
#: Documents fetched per ``_id $in`` query.
_FETCH_CHUNK = 100


@dataclass(frozen=True)
class QueryField:
    """A flat field of a summary document that queries filter (and maybe sort) on.

    ``kind``: ``"string"``, ``"number"``, ``"bool"`` or ``"list"`` (of strings);
    ``sortable``: ``ionflow query --sort`` accepts it; ``nullable``: documents may hold null (sorted last);
    ``index``: direction of its single-field index on ``summaries`` (``None``: none).
    """

    name: str
    kind: str
    sortable: bool = True
    nullable: bool = False
    index: int | None = None


#: The query fields of a summary (:class:`ionflow.summary.MaterialSummary`), declared once:
#: the columns of this module, the sort fields (:data:`ionflow.results.SORT_FIELDS`, in this
#: order) and the indexes (:data:`ionflow.results.INDEXES`) derive from it. ``campaign`` has
#: no index of its own: the unique (campaign, material) index serves it by its prefix.
#: (The CSV export's columns, :data:`ionflow.results.CSV_COLUMNS`, and the report's tables
#: are other lists on purpose: every summary field flattened, and headings for people.)
QUERY_FIELDS: tuple[QueryField, ...] = (
    QueryField("sigma_300k_ms_cm", "number", nullable=True, index=-1),
    QueryField("sigma_300k_low_ms_cm", "number", nullable=True),
    QueryField("sigma_300k_high_ms_cm", "number", nullable=True),
    QueryField("ea_ev", "number", nullable=True, index=1),
    QueryField("ea_err_ev", "number", nullable=True),
    QueryField("pinned_ea_ev", "number", nullable=True),
    QueryField("material", "string", index=1),
    QueryField("formula", "string", index=1),
    QueryField("chemsys", "string", index=1),
    QueryField("campaign", "string"),
    QueryField("engine_md", "string", index=1),
    QueryField("mobile_species", "string", index=1),
    QueryField("n_atoms_supercell", "number"),
    QueryField("pinned_verdict", "string", sortable=False, index=1),
    QueryField("elements", "list", sortable=False, index=1),
    QueryField("regimes", "list", sortable=False, index=1),
    # mechanism evidence (summary schema 1.2)
    QueryField("isolated_fraction", "number", nullable=True, index=1),
    QueryField("percolation_dimension", "number", nullable=True, index=1),
    QueryField("rotation_coupled", "bool", sortable=False, index=1),
    # compute and precision target (summary schema 1.3)
    QueryField("core_hours", "number", nullable=True, index=1),
    QueryField("target_met", "bool", sortable=False, index=1),
)
STRING_FIELDS = tuple(f.name for f in QUERY_FIELDS if f.kind == "string")
NUMBER_FIELDS = tuple(f.name for f in QUERY_FIELDS if f.kind == "number")
LIST_FIELDS = tuple(f.name for f in QUERY_FIELDS if f.kind == "list")
BOOL_FIELDS = tuple(f.name for f in QUERY_FIELDS if f.kind == "bool")

_CACHE: dict[tuple, tuple[tuple, Columns]] = {}
_CACHE_LOCK = threading.Lock()


class Unsupported(Exception):
    """The filter uses something the columns cannot evaluate (the server will)."""


def touch(db) -> None:
    """Mark the columns of ``db`` (a pymongo Database) stale after writing summaries."""
    db[INDEX_COLLECTION].update_one({"_id": STATE_ID}, {"$inc": {"version": 1}}, upsert=True)


@dataclass
class Columns:
    """The flat query fields of every summary, column by column."""

    ids: np.ndarray  # the documents' _id (ObjectId bytes), rows × 12 uint8
    strings: dict[str, tuple[np.ndarray, list]]  # field -> (codes, sorted unique values)
    numbers: dict[str, np.ndarray]  # field -> float64, NaN for null/missing (bools: 1/0)
    lists: dict[str, tuple[np.ndarray, list]]  # field -> (bool rows × values, values)

    @property
    def n(self) -> int:
        return len(self.ids)

    def object_ids(self, rows) -> list:
        """The ``_id`` of ``rows``."""
        from bson import ObjectId

        return [ObjectId(self.ids[i].tobytes()) for i in rows]

    # ------------------------------------------------------------------ build / store
    @classmethod
    def from_documents(cls, docs: list[dict]) -> Columns:
        raw = b"".join(_oid_bytes(d["_id"]) for d in docs)
        ids = np.frombuffer(raw, dtype=np.uint8).reshape(len(docs), 12)
        strings = {}
        for f in STRING_FIELDS:
            values = [d.get(f) if isinstance(d.get(f), str) else None for d in docs]
            uniques = sorted({v for v in values if v is not None})
            pos = {v: i + 1 for i, v in enumerate(uniques)}  # 0 = null
            codes = np.fromiter((pos.get(v, 0) for v in values), dtype=np.int32, count=len(docs))
            strings[f] = (codes, uniques)
        numbers = {
            f: np.array([_number(d.get(f)) for d in docs], dtype=np.float64) for f in NUMBER_FIELDS
        }
        for f in BOOL_FIELDS:
            numbers[f] = np.array([_bool_number(d.get(f)) for d in docs], dtype=np.float64)
        lists = {}
        for f in LIST_FIELDS:
            rows = [v if isinstance(v := d.get(f), list) else [] for d in docs]
            values = sorted({x for r in rows for x in r if isinstance(x, str)})
            col = {v: i for i, v in enumerate(values)}
            mat = np.zeros((len(docs), len(values)), dtype=bool)
            for i, r in enumerate(rows):
                for x in r:
                    if x in col:
                        mat[i, col[x]] = True
            lists[f] = (mat, values)
        return cls(ids, strings, numbers, lists)

    def to_bytes(self) -> bytes:
        header = {
            "format": FORMAT,
            "strings": {f: u for f, (_, u) in self.strings.items()},
            "lists": {f: v for f, (_, v) in self.lists.items()},
        }
        arrays: dict[str, np.ndarray] = {
            "header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
            "ids": self.ids,
        }
        for f, (codes, _) in self.strings.items():
            arrays[f"s_{f}"] = codes
        for f, vals in self.numbers.items():
            arrays[f"n_{f}"] = vals
        for f, (mat, _) in self.lists.items():
            arrays[f"l_{f}"] = mat
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> Columns:
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            header = json.loads(bytes(z["header"]).decode())
            if header.get("format") != FORMAT:
                raise ValueError("query index format changed")
            ids = z["ids"].reshape(-1, 12)
            strings = {f: (z[f"s_{f}"], list(u)) for f, u in header["strings"].items()}
            numbers = {f: z[f"n_{f}"] for f in (*NUMBER_FIELDS, *BOOL_FIELDS)}
            lists = {f: (z[f"l_{f}"], list(v)) for f, v in header["lists"].items()}
        return cls(ids, strings, numbers, lists)

    # ------------------------------------------------------------------ filter / sort
    def mask(self, filt: dict[str, Any]) -> np.ndarray:
        """Rows matching ``filt`` (raises :class:`Unsupported`)."""
        m = np.ones(self.n, dtype=bool)
        for key, cond in filt.items():
            if key == "$and":
                for sub in cond:
                    m &= self.mask(sub)
            elif key in self.strings:
                m &= self._string(key, cond)
            elif key in BOOL_FIELDS:
                m &= self._bool(key, cond)
            elif key in self.numbers:
                m &= self._number(key, cond)
            elif key in self.lists:
                m &= self._list(key, cond)
            else:
                raise Unsupported(key)
        return m

    def _string(self, field: str, cond) -> np.ndarray:
        codes, uniques = self.strings[field]
        ok = np.ones(len(uniques) + 1, dtype=bool)  # per code; code 0 is null/missing
        values = [None, *uniques]
        if not isinstance(cond, dict):
            cond = {"$eq": cond}
        if not cond:
            raise Unsupported(f"{field}: {{}}")
        for op, arg in cond.items():
            if op == "$options":
                continue
            if op == "$regex":
                options = str(cond.get("$options", ""))
                if set(options) - {"i"} or not isinstance(arg, str):
                    raise Unsupported(f"{field} $regex options {options!r}")
                flags = re.IGNORECASE if "i" in options else 0
                rx = re.compile(arg, flags)
                ok &= np.array([v is not None and bool(rx.search(v)) for v in values])
            elif op in ("$eq", "$ne", "$in", "$nin"):
                want = set(arg) if op in ("$in", "$nin") else {arg}
                if any(w is not None and not isinstance(w, str) for w in want):
                    raise Unsupported(f"{field} {op} {arg!r}")
                hit = np.array([v in want for v in values])
                ok &= ~hit if op in ("$ne", "$nin") else hit
            elif op in _COMPARE:
                if not isinstance(arg, str):
                    raise Unsupported(f"{field} {op} {arg!r}")
                ok &= np.array([v is not None and _COMPARE[op](v, arg) for v in values])
            else:
                raise Unsupported(f"{field} {op}")
        return ok[codes]

    def _number(self, field: str, cond) -> np.ndarray:
        vals = self.numbers[field]
        if not isinstance(cond, dict):
            cond = {"$eq": cond}
        m = np.ones(self.n, dtype=bool)
        with np.errstate(invalid="ignore"):
            for op, arg in cond.items():
                if arg is None and op in ("$eq", "$ne"):
                    null = np.isnan(vals)
                    m &= null if op == "$eq" else ~null
                elif isinstance(arg, bool) or not isinstance(arg, (int, float)):
                    raise Unsupported(f"{field} {op} {arg!r}")
                elif op == "$eq":
                    m &= vals == arg
                elif op == "$ne":
                    m &= vals != arg
                elif op in _COMPARE:
                    m &= _COMPARE[op](vals, arg)
                else:
                    raise Unsupported(f"{field} {op}")
        return m

    def _bool(self, field: str, cond) -> np.ndarray:
        vals = self.numbers[field]
        if not isinstance(cond, dict):
            cond = {"$eq": cond}
        m = np.ones(self.n, dtype=bool)
        for op, arg in cond.items():
            if op not in ("$eq", "$ne") or not (arg is None or isinstance(arg, bool)):
                raise Unsupported(f"{field} {op} {arg!r}")
            hit = np.isnan(vals) if arg is None else vals == float(arg)
            m &= hit if op == "$eq" else ~hit
        return m

    def _list(self, field: str, cond) -> np.ndarray:
        mat, values = self.lists[field]
        col = {v: i for i, v in enumerate(values)}

        def has(v) -> np.ndarray:
            if not isinstance(v, str):
                raise Unsupported(f"{field} element {v!r}")
            return mat[:, col[v]] if v in col else np.zeros(self.n, dtype=bool)

        if not isinstance(cond, dict):
            return has(cond)
        m = np.ones(self.n, dtype=bool)
        for op, arg in cond.items():
            if op == "$all":
                for v in arg:
                    m &= has(v)
            elif op == "$in":
                any_ = np.zeros(self.n, dtype=bool)
                for v in arg:
                    any_ |= has(v)
                m &= any_
            elif op == "$eq":
                m &= has(arg)
            else:
                raise Unsupported(f"{field} {op}")
        return m

    def order(self, rows: np.ndarray, key: str, descending: bool, nulls_last: bool) -> np.ndarray:
        """``rows`` sorted by ``key`` then (campaign, material) ascending, as the server does.

        Null numbers come last when ``nulls_last``, else as in BSON order (below every
        value: last when descending, first when ascending).
        """
        keys = []  # least significant first (np.lexsort)
        for tie in ("material", "campaign"):
            if tie != key:
                keys.append(self.strings[tie][0][rows])
        if key in self.numbers:
            vals = self.numbers[key][rows]
            null = np.isnan(vals)
            primary = np.where(null, 0.0, -vals if descending else vals)
        elif key in self.strings:
            codes = self.strings[key][0][rows]
            null = codes == 0
            primary = -codes if descending else codes
        else:
            raise Unsupported(f"sort {key}")
        keys.append(primary)
        if nulls_last:
            keys.append(null.astype(np.int8))  # numbers first, then nulls
        else:
            keys.append((null if descending else ~null).astype(np.int8))
        return rows[np.lexsort(keys)]


_COMPARE = {
    "$gte": lambda a, b: a >= b,
    "$gt": lambda a, b: a > b,
    "$lte": lambda a, b: a <= b,
    "$lt": lambda a, b: a < b,
}


def _number(v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return np.nan
    return float(v)


def _bool_number(v) -> float:
    return float(v) if isinstance(v, bool) else np.nan


def _oid_bytes(value) -> bytes:
    from bson import ObjectId

    if not isinstance(value, ObjectId):
        raise Unsupported("summary _id is not an ObjectId")
    return value.binary


def _cache_key(coll) -> tuple:
    """Server + database (a cached entry is also checked against the stored version)."""
    db = coll.database
    try:
        nodes = tuple(sorted(db.client.nodes))
    except Exception:  # noqa: BLE001 - mongomock and other clients
        nodes = ()
    return (nodes or id(db.client), db.name)


def load(coll) -> Columns | None:
    """Current columns of the summaries collection ``coll`` (rebuilt if stale), or None.

    None when the collection is small (:data:`MIN_DOCUMENTS`; the server answers those
    quickly) or its documents cannot be indexed here (``_id`` not an ObjectId). Costs two
    tiny reads when the process already holds the current columns.
    """
    idx = coll.database[INDEX_COLLECTION]
    head = {d["_id"]: d for d in idx.find({"_id": {"$in": [STATE_ID, COLUMNS_ID]}}, {"blob": 0})}
    version = (head.get(STATE_ID) or {}).get("version", 0)
    stored = head.get(COLUMNS_ID) or {}
    if stored.get("version") != version or stored.get("format") != FORMAT:
        return _rebuild(coll, version)
    if stored.get("n", 0) < MIN_DOCUMENTS:
        return None
    key = _cache_key(coll)
    stamp = (version, stored.get("n"), stored.get("built"))
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    doc = idx.find_one({"_id": COLUMNS_ID})
    if doc is None or doc.get("version") != version or doc.get("blob") is None:
        return _rebuild(coll, version)
    try:
        cols = Columns.from_bytes(bytes(doc["blob"]))
    except ValueError:
        return _rebuild(coll, version)
    with _CACHE_LOCK:
        _CACHE[key] = ((version, doc.get("n"), doc.get("built")), cols)
    return cols


def _rebuild(coll, version: int) -> Columns | None:
    """Build the columns from the summaries (one projection of the flat fields) and store
    them with the version read before (a write meanwhile leaves them stale, as it should).
    A small collection is recorded as such (no blob) and answered by the server."""
    import datetime

    fields = {f: 1 for f in (*STRING_FIELDS, *NUMBER_FIELDS, *BOOL_FIELDS, *LIST_FIELDS)}
    docs = list(coll.find({}, fields))
    built = datetime.datetime.now(datetime.UTC).isoformat()
    record = {"version": version, "n": len(docs), "format": FORMAT, "built": built}
    cols = None
    if len(docs) >= MIN_DOCUMENTS:
        try:
            cols = Columns.from_documents(docs)
            record["blob"] = cols.to_bytes()
        except Unsupported:
            cols = None
            record["n"] = 0  # not indexable: leave it to the server until the next write
    coll.database[INDEX_COLLECTION].replace_one({"_id": COLUMNS_ID}, record, upsert=True)
    if cols is not None:
        with _CACHE_LOCK:
            _CACHE[_cache_key(coll)] = ((version, cols.n, built), cols)
    return cols


def find(
    coll,
    filt: dict[str, Any],
    *,
    key: str,
    descending: bool,
    nulls_last: bool,
    limit: int | None,
) -> list[dict] | None:
    """Documents matching ``filt`` in order (``_id`` removed), or None (ask the server)."""
    try:
        cols = load(coll)
        if cols is None:
            return None
        rows = np.nonzero(cols.mask(filt))[0]
        rows = cols.order(rows, key, descending, nulls_last)
    except Unsupported:
        return None
    if limit:
        rows = rows[:limit]
    ids = cols.object_ids(rows)
    docs = {}
    for k in range(0, len(ids), _FETCH_CHUNK):  # a long $in list is slow on SecantusDB
        docs.update((d["_id"], d) for d in coll.find({"_id": {"$in": ids[k : k + _FETCH_CHUNK]}}))
    if len(docs) != len(ids):  # deleted since the columns were built: let the server answer
        return None
    out = []
    for i in ids:
        d = docs[i]
        d.pop("_id", None)
        out.append(d)
    return out
