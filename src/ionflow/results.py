"""Read campaign results back: query summaries, fetch run analyses, export data; and the
one writer of summaries (:func:`store_summary`, :func:`set_current_summaries`).

Store layout (see ``docs/results.md``)
--------------------------------------
The JobStore database (default ``ionflow``) holds

* ``outputs`` (+ GridFS ``outputs_blobs``): jobflow's job outputs, one document per
  (job ``uuid``, ``index``) with ``name``, ``output``, ``metadata`` (``ionflow_campaign``,
  ``ionflow_material``, ``ionflow_variant``, ``ionflow_temperature_k``), ``completed_at``;
* ``trajectories.files`` / ``.chunks``: GridFS bucket of float32 ``.npz`` trajectories,
  one per MD run (:mod:`ionflow.trajectories`);
* ``summaries``: one :class:`~ionflow.summary.MaterialSummary` per (campaign, material),
  the document this module queries.

Everything here accepts a *source*: a :class:`~ionflow.store.ResolvedDatabase` (a client
is opened and closed per call), a pymongo (or mongomock) ``Database`` holding the
collections above, or -- for the summary functions -- the ``summaries`` ``Collection``.

Nothing in this module starts a server; :func:`open_database` (used by the CLI) does,
and only for a data directory that already holds a database.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pydantic import ValidationError

from ionflow.errors import UserInputError
from ionflow.names import (
    CURRENT_COLLECTION,
    META_CAMPAIGN,
    META_KEY,
    META_MATERIAL,
    META_TEMPERATURE_K,
    META_VARIANT,
    OUTPUTS_COLLECTION,
    SUMMARY_COLLECTION,
    data_dir_path,
)
from ionflow.query_index import QUERY_FIELDS
from ionflow.summary import SCHEMA_VERSION, MaterialSummary, VariantSummary

if TYPE_CHECKING:
    from ionflow.analysis import DiffusionAnalysis
    from ionflow.store import ResolvedDatabase
    from ionflow.trajectories import StoredFileRef, TrajectoryRef

__all__ = [
    "CSV_COLUMNS",
    "INDEXES",
    "REGIMES",
    "SORT_FIELDS",
    "SUMMARY_COLLECTION",
    "VERDICT_CATEGORIES",
    "NoDatabaseError",
    "RunAnalysis",
    "SchemaVersionError",
    "build_filter",
    "ensure_indexes",
    "export_trajectory_extxyz",
    "fetch_run_analyses",
    "iter_run_analyses",
    "find_md_output",
    "find_summary_documents",
    "format_number",
    "regimes_text",
    "set_current_summaries",
    "store_summary",
    "ea_resolved",
    "sigma_300k_note",
    "sigma_300k_quoted",
    "known_campaigns",
    "load_summaries",
    "open_database",
    "open_query_database",
    "open_source",
    "SourceHandle",
    "parse_summary",
    "query_summaries",
    "summaries_to_csv",
    "summaries_to_json",
    "summary_row",
    "verdict_category",
]

# OUTPUTS_COLLECTION (the JobStore's job outputs), SUMMARY_COLLECTION: see ionflow.names.
#: Major schema version this code reads (documents of another major version are refused).
SUPPORTED_SCHEMA_MAJOR = int(SCHEMA_VERSION.split(".")[0])

#: Indexes of the ``summaries`` collection: (keys, options) — the unique (campaign, material)
#: index and one per indexed query field (:data:`ionflow.query_index.QUERY_FIELDS`).
#: ``campaign`` alone is served by the prefix of the unique index. SecantusDB has no text
#: indexes: verdict searches are (anchored, where possible) regular expressions.
INDEXES: list[tuple[list[tuple[str, int]], dict[str, Any]]] = [
    ([("campaign", 1), ("material", 1)], {"unique": True, "name": "campaign_material_unique"}),
    *(([(f.name, f.index)], {}) for f in QUERY_FIELDS if f.index is not None),
]

#: Fields ``sort`` accepts (aliases in :data:`SORT_ALIASES`).
SORT_FIELDS = tuple(f.name for f in QUERY_FIELDS if f.sortable)
SORT_ALIASES = {"sigma": "sigma_300k_ms_cm", "ea": "ea_ev", "engine": "engine_md"}
#: Sort fields that may be null (such documents always come last, whatever the direction).
_NULLABLE_SORT_FIELDS = {f.name for f in QUERY_FIELDS if f.sortable and f.nullable}

REGIMES = ("diffusive", "subdiffusive", "caged", "insufficient")

#: ``pinned_verdict`` categories → regular expression on the verdict text (see
#: :func:`ionflow.summary.overall_verdict`). ``lowers`` includes the mixed verdicts
#: ("pinning lowers diffusion at 1 of 3 temperatures: mixed evidence"); ``raises``: raised
#: at some temperature and lowered at none; ``inconclusive`` includes runs too short to
#: exclude an effect; any other value is a case-insensitive substring.
VERDICT_CATEGORIES = {
    "lowers": "^pinning lowers",
    "mixed": "mixed evidence",
    "raises": "^pinning raises",
    "no significant": "^no significant",
    "none": "^no pinned control",
    "inconclusive": "^inconclusive",
}


#: Categories that are a prefix of the verdict (see :func:`ionflow.summary.overall_verdict`).
_VERDICT_PREFIXES = {
    "lowers": "pinning lowers",
    "raises": "pinning raises",
    "no significant": "no significant",
    "none": "no pinned control",
    "inconclusive": "inconclusive",
}
#: Elements roughly from most to least common in ion-conductor campaigns (for
#: :func:`_rarest_element`; elements not listed count as rarest).
_COMMON_ELEMENTS = (
    "Li", "O", "S", "P", "Na", "Cl", "N", "F", "Br", "I", "H", "Si", "B", "Se", "K", "Al", "Ge",
    "Zr", "La", "Ti",
)  # fmt: skip


class SchemaVersionError(UserInputError):
    """A stored summary has a schema this version of ionflow cannot read."""


class NoDatabaseError(UserInputError):
    """The data directory holds no ionflow database (nothing was run there)."""


# ----------------------------------------------------------------------------- sources


@dataclass
class SourceHandle:
    """An open pymongo-like Database plus how to build a JobStore on it."""

    db: Any
    resolved: Any = None

    def jobstore(self):
        """``(store, owned)``: a connected JobStore over ``outputs`` (with the GridFS data
        store when resolved); close it only if ``owned`` -- a store wrapped around the
        caller's collection would close the caller's client."""
        if self.resolved is not None:
            store = self.resolved.jobstore()
            store.connect()
            return store, True
        from jobflow import JobStore
        from maggma.stores import MongoStore

        return JobStore(MongoStore.from_collection(self.db[OUTPUTS_COLLECTION])), False


def _kind(obj: Any) -> str:
    name = type(obj).__name__
    if name == "ResolvedDatabase" and callable(getattr(obj, "client", None)):
        return "resolved"
    if name in ("Database", "Collection"):
        return name.lower()
    raise TypeError(
        "expected a ResolvedDatabase, or a pymongo/mongomock Database or Collection, "
        f"got {type(obj).__name__}"
    )


@contextlib.contextmanager
def open_source(source: Any) -> Iterator[SourceHandle]:
    """Yield a :class:`SourceHandle` on ``source`` (closing a client opened here)."""
    kind = _kind(source)
    if kind == "resolved":
        client = source.client()
        try:
            yield SourceHandle(client[source.database], source)
        finally:
            client.close()
    elif kind == "database":
        yield SourceHandle(source)
    else:
        yield SourceHandle(source.database)


@contextlib.contextmanager
def _summaries(source: Any) -> Iterator[Any]:
    """Yield the ``summaries`` collection of ``source`` (or ``source`` if a collection)."""
    if _kind(source) == "collection":
        yield source
        return
    with open_source(source) as handle:
        yield handle.db[SUMMARY_COLLECTION]


def open_database(
    data_dir: Path | str | None = None,
    uri: str | None = None,
    launchpad: Path | str | None = None,
    *,
    database: str = "ionflow",
) -> ResolvedDatabase:
    """Resolve the database of an existing project for reading.

    Parameters
    ----------
    data_dir
        Project data directory (default ``./ionflow-data``); used when neither ``uri`` nor
        ``launchpad`` is given. Its embedded server is started if it is not running, but
        only if the directory already holds a database (``db/``): an empty or missing
        directory raises :class:`NoDatabaseError` instead of creating an empty database.
    uri
        MongoDB connection string (secret: never printed).
    launchpad
        FireWorks ``my_launchpad.yaml``.
    database
        JobStore database name.

    Raises
    ------
    NoDatabaseError
        Nothing has been run in ``data_dir``.
    UserInputError
        Malformed settings, or the server cannot be started or reached.
    """
    path = data_dir_path(data_dir)
    if uri is None and launchpad is None:
        path = _data_dir_with_database(path)
    from ionflow.store import DatabaseSettings, resolve_database

    settings = DatabaseSettings(
        uri=uri,
        launchpad_file=Path(launchpad) if launchpad is not None else None,
        data_dir=path,
        database=database,
    )
    try:
        return resolve_database(settings)
    except RuntimeError as exc:  # messages are redacted by ionflow.store
        raise UserInputError(f"cannot open the database: {exc}") from None


def _local_server_uri(data_dir: Path) -> tuple[str, str] | None:
    """(uri, description) of the live embedded server of ``data_dir``, read from its
    ``server.json`` without :mod:`ionflow.store`'s server manager (no lock, no start, no
    settings); None if not running."""
    import socket

    import psutil

    try:
        info = json.loads((data_dir / "server.json").read_text())
        pid, port = int(info["pid"]), int(info["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if info.get("hostname", socket.gethostname()) != socket.gethostname():
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE or str(data_dir / "db") not in proc.cmdline():
            return None
    except psutil.AccessDenied:
        pass
    except psutil.Error:
        return None
    host = info.get("host", "127.0.0.1")
    return (
        f"mongodb://{host}:{port}/?journal=true",
        f"local SecantusDB {host}:{port} (pid {pid}, data {data_dir})",
    )


def open_query_database(
    data_dir: Path | str | None = None,
    uri: str | None = None,
    launchpad: Path | str | None = None,
    *,
    database: str = "ionflow",
) -> tuple[Any, str, Any]:
    """Open the JobStore database for summary queries: ``(Database, description, client)``.

    Like :func:`open_database`, but connects straight to a ``uri`` or to the data
    directory's running embedded server without :mod:`ionflow.store`'s resolution (it
    imported FireWorks/jobflow until the backends moved out; it still pings and locks); a
    stopped server or a
    ``launchpad`` file go through :func:`open_database`. The caller closes ``client``.

    Raises
    ------
    NoDatabaseError, UserInputError
        As :func:`open_database`; also a ``uri`` whose server does not answer.
    """
    import pymongo
    from pymongo.errors import PyMongoError

    if launchpad is None:
        target = None
        if uri is not None:
            if not uri.startswith(("mongodb://", "mongodb+srv://")):
                raise UserInputError(
                    "database uri: expected a MongoDB connection string starting with "
                    "'mongodb://' or 'mongodb+srv://'"
                )
            target = (uri, "the database at --uri / IONFLOW_DB_URI")
        else:
            path = _data_dir_with_database(data_dir)
            target = _local_server_uri(path)
        if target is not None:
            client = pymongo.MongoClient(target[0], serverSelectionTimeoutMS=10_000)
            try:
                client[database].command("ping")
            except PyMongoError as exc:
                client.close()
                if uri is not None:  # the message may name hosts, never the password
                    raise UserInputError(
                        f"cannot reach {target[1]} ({type(exc).__name__})"
                    ) from None
            else:
                return client[database], target[1], client
    resolved = open_database(data_dir, uri, launchpad, database=database)
    client = resolved.client()
    return client[resolved.database], resolved.description, client


def _data_dir_with_database(data_dir: Path | str | None) -> Path:
    path = data_dir_path(data_dir)
    if not ((path / "db").is_dir() or (path / "server.json").exists()):
        raise NoDatabaseError(
            f"no ionflow database in {path} (nothing has been run there): run "
            "`ionflow run workflows.yaml` first, or give --data-dir of a project, "
            "--uri or --launchpad"
        )
    return path


# ----------------------------------------------------------------------------- writing


def store_summary(collection, doc: dict) -> bool:
    """Upsert a summary document into ``summaries`` unless it is not the current one.

    Keyed by (campaign, material). Every submission records the key of each material's
    summary job (:func:`set_current_summaries`); a summary whose
    ``provenance.summary_key`` differs from the recorded one belongs to an earlier or
    later plan (e.g. before a temperature was added) and is not written — whichever
    summary job runs last. Without a record (jobs run outside ``ionflow run/submit``) the
    last write wins. Returns whether ``doc`` was written.
    """
    key = {"campaign": doc["campaign"], "material": doc["material"]}
    mine = (doc.get("provenance") or {}).get("summary_key")
    current = collection.database[CURRENT_COLLECTION].find_one(key) or {}
    if mine is not None and current.get("summary_key") not in (None, mine):
        return False
    collection.replace_one(key, doc, upsert=True)
    from ionflow.query_index import touch

    touch(collection.database)  # the columnar query copy is stale now
    return True


def set_current_summaries(db, campaign: str, keys: dict[str, str]) -> list[str]:
    """Record each material's current summary key; bring ``summaries`` in line with it.

    ``db`` is the JobStore database, ``keys`` material → summary job key (the submitted
    plan; the campaign's records of materials not in it are dropped). When the stored
    summary of a material is another plan's and the current plan's summary job has already
    run (its output is in ``outputs``, e.g. the user went back to an earlier temperature
    list), that output is stored again. Returns the materials whose stored summary was
    replaced this way.
    """
    if not keys:
        return []
    current = db[CURRENT_COLLECTION]
    current.create_index([("campaign", 1), ("material", 1)])
    # two writes, not an upsert per material (thousands of materials; no long $in lists,
    # slow on SecantusDB): the campaign's records are replaced by this plan's. A summary
    # job finishing in between finds no record and writes (last write wins), as before.
    current.delete_many({"campaign": campaign})
    current.insert_many(
        [{"campaign": campaign, "material": m, "summary_key": k} for m, k in keys.items()]
    )
    stored = {
        d["material"]: (d.get("provenance") or {}).get("summary_key")
        for d in db[SUMMARY_COLLECTION].find(
            {"campaign": campaign}, {"material": 1, "provenance.summary_key": 1}
        )
        if d.get("material") in keys
    }
    stale = {m: keys[m] for m, k in stored.items() if k is not None and k != keys[m]}
    restored = []
    for material, key in stale.items():
        out = list(
            db[OUTPUTS_COLLECTION]
            .find({f"metadata.{META_KEY}": key}, {"output": 1})
            .sort("index", -1)
            .limit(1)
        )
        doc = out[0].get("output") if out else None
        if isinstance(doc, dict) and doc.get("material") == material:
            store_summary(db[SUMMARY_COLLECTION], doc)
            restored.append(material)
    return restored


# ----------------------------------------------------------------------------- indexes


def ensure_indexes(source: Any) -> list[str]:
    """Create the :data:`INDEXES` on the ``summaries`` collection (idempotent).

    Parameters
    ----------
    source
        ResolvedDatabase, Database or the ``summaries`` Collection.

    Returns
    -------
    list of str
        Index names.

    Raises
    ------
    UserInputError
        Two summaries share (campaign, material), so the unique index cannot be built.
    """
    from pymongo.errors import DuplicateKeyError, OperationFailure

    names = []
    with _summaries(source) as coll:
        for keys, options in INDEXES:
            try:
                names.append(coll.create_index(keys, **options))
            except (DuplicateKeyError, OperationFailure) as exc:
                if not options.get("unique") or "duplicate" not in str(exc).lower():
                    raise
                dups = _duplicates(coll)
                raise UserInputError(
                    "summaries: several documents for the same (campaign, material): "
                    + ", ".join(f"{c}/{m} ×{n}" for c, m, n in dups[:10])
                    + "; delete the extra ones"
                ) from None
    return names


def _duplicates(coll) -> list[tuple[str, str, int]]:
    seen: dict[tuple[str, str], int] = {}
    for d in coll.find({}, {"_id": 0, "campaign": 1, "material": 1}):
        key = (d.get("campaign"), d.get("material"))
        seen[key] = seen.get(key, 0) + 1
    return [(c, m, n) for (c, m), n in sorted(seen.items()) if n > 1]


# ----------------------------------------------------------------------------- filters


def _split_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = re.split(r"[,\s]+", value)
    return [v.strip() for v in value if v and v.strip()]


def _element(symbol: str, what: str) -> str:
    sym = symbol.strip()
    sym = sym[:1].upper() + sym[1:].lower()
    if not re.fullmatch(r"[A-Z][a-z]{0,2}", sym):
        raise UserInputError(f"{what}: {symbol!r} is not an element symbol")
    return sym


def _normalize_formula(formula: str) -> str:
    """Reduced formula as pymatgen writes it (``P S4 Li3`` → ``Li3PS4``)."""
    text = formula.strip()
    if not text:
        raise UserInputError("formula: empty")
    try:
        from pymatgen.core import Composition

        return Composition(text).reduced_formula
    except ImportError:  # pragma: no cover - pymatgen is a dependency
        return text
    except Exception:  # noqa: BLE001 - pymatgen raises several types for bad formulas
        raise UserInputError(f"formula: cannot parse {formula!r} as a chemical formula") from None


def _normalize_chemsys(chemsys: str) -> str:
    """``S-Li-P`` / ``Li,P,S`` → ``Li-P-S`` (sorted, as pymatgen's chemical_system)."""
    parts = [_element(p, "chemsys") for p in re.split(r"[-,\s]+", chemsys) if p.strip()]
    if not parts:
        raise UserInputError("chemsys: empty")
    return "-".join(sorted(set(parts)))


def resolve_sort(sort: str) -> str:
    """Canonical sort field, or :class:`UserInputError` listing the allowed ones."""
    key = SORT_ALIASES.get(sort, sort)
    if key not in SORT_FIELDS:
        raise UserInputError(
            f"unknown sort field {sort!r}; allowed: {', '.join(SORT_FIELDS)} "
            f"(aliases: {', '.join(f'{a}={b}' for a, b in SORT_ALIASES.items())})"
        )
    return key


def _range(field: str, lo: float | None, hi: float | None, unit: str) -> dict | None:
    for name, v in (("min", lo), ("max", hi)):
        if v is not None and not math.isfinite(v):
            raise UserInputError(f"{field} {name} must be a finite number of {unit}, got {v}")
    if lo is not None and hi is not None and lo > hi:
        raise UserInputError(f"{field}: min {lo:g} > max {hi:g} {unit}")
    cond = {}
    if lo is not None:
        cond["$gte"] = float(lo)
    if hi is not None:
        cond["$lte"] = float(hi)
    return cond or None


def build_filter(
    *,
    campaign: str | None = None,
    formula: str | None = None,
    chemsys: str | None = None,
    elements: str | Sequence[str] | None = None,
    engine: str | None = None,
    sigma_min_ms_cm: float | None = None,
    sigma_max_ms_cm: float | None = None,
    ea_min_ev: float | None = None,
    ea_max_ev: float | None = None,
    regime: str | None = None,
    pinned_verdict: str | None = None,
    isolated_fraction_min: float | None = None,
    percolation_dimension: int | None = None,
    rotation_coupled: bool | None = None,
    target_met: bool | None = None,
    core_hours_min: float | None = None,
    core_hours_max: float | None = None,
) -> dict[str, Any]:
    """MongoDB filter for :func:`query_summaries` (arguments documented there).

    The clauses are ordered from the usually most selective to the least, and written
    in forms an index can serve (an element equality, a string range for a verdict
    prefix): SecantusDB answers a multi-field filter through the index of the *first*
    clause that has one, and it decodes every candidate document that index returns.
    """
    if campaign is not None:
        campaign = str(campaign)
    els = sorted({_element(e, "elements") for e in _split_list(elements)})
    sigma = _range("sigma(300 K)", sigma_min_ms_cm, sigma_max_ms_cm, "mS/cm")
    ea = _range("Ea", ea_min_ev, ea_max_ev, "eV")
    reg = None
    if regime is not None:
        reg = regime.strip().lower()
        if reg not in REGIMES:
            raise UserInputError(f"regime must be one of {', '.join(REGIMES)}; got {regime!r}")
    verdict = None
    if pinned_verdict is not None:
        text = pinned_verdict.strip()
        if not text:
            raise UserInputError("pinned verdict: empty")
        category = text.lower()
        if category in _VERDICT_PREFIXES:  # anchored prefix → index-servable string range
            prefix = _VERDICT_PREFIXES[category]
            verdict = {"$gte": prefix, "$lt": prefix[:-1] + chr(ord(prefix[-1]) + 1)}
        elif category in VERDICT_CATEGORIES:
            verdict = {"$regex": VERDICT_CATEGORIES[category]}
        else:
            verdict = {"$regex": re.escape(text), "$options": "i"}
    filt: dict[str, Any] = {}
    if formula is not None:
        filt["formula"] = _normalize_formula(formula)
    if chemsys is not None:
        filt["chemsys"] = _normalize_chemsys(chemsys)
    if campaign is not None:
        filt["campaign"] = campaign
    if sigma:
        filt["sigma_300k_ms_cm"] = sigma
    if ea:
        filt["ea_ev"] = ea
    if els:
        filt["elements"] = _rarest_element(els)  # an equality an index serves …
    if verdict is not None:
        filt["pinned_verdict"] = verdict
    if engine is not None:
        filt["engine_md"] = engine.strip().lower()
    if reg is not None:
        filt["regimes"] = reg
    if isolated_fraction_min is not None:
        x = float(isolated_fraction_min)
        if not (math.isfinite(x) and 0 <= x <= 1):
            raise UserInputError(f"isolated fraction min must be in [0, 1]; got {x:g}")
        filt["isolated_fraction"] = {"$gte": x}
    if percolation_dimension is not None:
        if isinstance(percolation_dimension, bool) or percolation_dimension not in (0, 1, 2, 3):
            raise UserInputError(
                f"percolation dimension must be 0, 1, 2 or 3; got {percolation_dimension!r}"
            )
        filt["percolation_dimension"] = int(percolation_dimension)
    if rotation_coupled is not None:
        filt["rotation_coupled"] = bool(rotation_coupled)
    if target_met is not None:
        filt["target_met"] = bool(target_met)
    hours: dict[str, float] = {}
    for op, value in (("$gte", core_hours_min), ("$lte", core_hours_max)):
        if value is not None:
            x = float(value)
            if not (math.isfinite(x) and x >= 0):
                raise UserInputError(f"core-hours bounds must be ≥ 0; got {x:g}")
            hours[op] = x
    if hours:
        filt["core_hours"] = hours
    if len(els) > 1:
        filt["$and"] = [{"elements": {"$all": els}}]  # … and all of them must be present
    return filt


def _rarest_element(elements: Sequence[str]) -> str:
    """The element of ``elements`` expected to be in the fewest summaries."""
    rank = {el: i for i, el in enumerate(_COMMON_ELEMENTS)}
    return max(elements, key=lambda el: (rank.get(el, len(rank)), el))


def verdict_category(verdict: str) -> str:
    """Category of an overall free-vs-pinned verdict (keys of :data:`VERDICT_CATEGORIES`).

    ``lowers`` here means lowered at every tested temperature; partial lowering is
    ``mixed``. Unrecognised texts give ``"other"``.
    """
    if re.search(VERDICT_CATEGORIES["mixed"], verdict):
        return "mixed"
    for name in ("lowers", "raises", "no significant", "none", "inconclusive"):
        if re.search(VERDICT_CATEGORIES[name], verdict):
            return name
    return "other"


# ----------------------------------------------------------------------------- queries


def _major(version: Any) -> int | None:
    m = re.match(r"^\s*(\d+)(?:\.\d+)*\s*$", str(version)) if version is not None else None
    return int(m.group(1)) if m else None


def parse_summary(doc: dict[str, Any]) -> MaterialSummary:
    """Validate a stored summary document, checking its schema version first.

    Minor versions newer than this code are read (added fields are ignored); another
    major version raises :class:`SchemaVersionError`.
    """
    doc = {k: v for k, v in doc.items() if k != "_id"}
    label = f"summary {doc.get('campaign', '?')}/{doc.get('material', '?')}"
    version = doc.get("schema_version")
    major = _major(version)
    if major != SUPPORTED_SCHEMA_MAJOR:
        from ionflow import __version__

        if major is None:
            what = (
                "has no readable schema_version"
                if version is None
                else (f"has an unreadable schema_version {version!r}")
            )
        else:
            what = f"has schema_version {version}"
        hint = (
            "upgrade ionflow to read it"
            if major is not None and major > SUPPORTED_SCHEMA_MAJOR
            else "re-run its summary job with this ionflow to rewrite it"
        )
        raise SchemaVersionError(
            f"{label} {what}; ionflow {__version__} reads schema "
            f"{SUPPORTED_SCHEMA_MAJOR}.x only: {hint}"
        )
    try:
        return MaterialSummary.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise SchemaVersionError(
            f"{label} does not match summary schema {SCHEMA_VERSION} ({exc.error_count()} "
            f"problem(s), first: {loc}: {first['msg']})"
        ) from None


def find_summary_documents(
    source: Any,
    filt: dict[str, Any] | None = None,
    *,
    sort: str = "sigma_300k_ms_cm",
    descending: bool = True,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Raw summary documents matching a filter (from :func:`build_filter`), sorted.

    Ties are broken by (campaign, material); documents whose sort field is null come
    last in either direction. Collections of at least
    :data:`ionflow.query_index.MIN_DOCUMENTS` summaries are answered from their columnar
    copy (:mod:`ionflow.query_index`; same results, fetched page only).
    """
    from pymongo import ASCENDING, DESCENDING

    key = resolve_sort(sort)
    if limit is not None and limit < 1:
        raise UserInputError(f"limit must be ≥ 1, got {limit}")
    filt = dict(filt or {})
    order = [(key, DESCENDING if descending else ASCENDING)]
    order += [(k, ASCENDING) for k in ("campaign", "material") if k != key]
    proj = {"_id": 0}
    nullable = key in _NULLABLE_SORT_FIELDS and key not in filt
    with _summaries(source) as coll:
        from ionflow import query_index

        fast = query_index.find(
            coll,
            filt,
            key=key,
            descending=descending,
            nulls_last=key in _NULLABLE_SORT_FIELDS,
            limit=limit,
        )
        if fast is not None:  # large collections: the columnar copy (same answer)
            return fast
        if not nullable or descending or limit is None:
            # one query: null/missing sort below every number in BSON order, i.e. already
            # last when descending; when ascending they are moved to the end here
            cur = coll.find(filt, proj).sort(order)
            docs = list(cur.limit(limit) if limit else cur)
            if nullable and not descending:
                docs = [d for d in docs if d.get(key) is not None] + [
                    d for d in docs if d.get(key) is None
                ]
            return docs
        # ascending with a limit: the numbers first, then (if room is left) the nulls
        docs = list(coll.find({**filt, key: {"$ne": None}}, proj).sort(order).limit(limit))
        if len(docs) < limit:
            rest = coll.find({**filt, key: None}, proj).sort(order[1:]).limit(limit - len(docs))
            docs += list(rest)
        return docs


def query_summaries(
    source: Any,
    *,
    campaign: str | None = None,
    formula: str | None = None,
    chemsys: str | None = None,
    elements: str | Sequence[str] | None = None,
    engine: str | None = None,
    sigma_min_ms_cm: float | None = None,
    sigma_max_ms_cm: float | None = None,
    ea_min_ev: float | None = None,
    ea_max_ev: float | None = None,
    regime: str | None = None,
    pinned_verdict: str | None = None,
    isolated_fraction_min: float | None = None,
    percolation_dimension: int | None = None,
    rotation_coupled: bool | None = None,
    target_met: bool | None = None,
    core_hours_min: float | None = None,
    core_hours_max: float | None = None,
    sort: str = "sigma_300k_ms_cm",
    descending: bool = True,
    limit: int | None = None,
) -> list[MaterialSummary]:
    """Summaries matching every given filter, as validated :class:`MaterialSummary` models.

    Parameters
    ----------
    source
        ResolvedDatabase, pymongo/mongomock Database, or the ``summaries`` Collection.
    campaign
        Campaign name (exact).
    formula
        Reduced formula; normalised with pymatgen (``S4PLi3`` finds ``Li3PS4``).
    chemsys
        Chemical system, any order/separator (``S-Li-P`` → ``Li-P-S``); exact system.
    elements
        Elements that must *all* be present (others may be too): ``"Li,P,S"`` or a list.
    engine
        MD engine (``engine_md``), e.g. ``chgnet``.
    sigma_min_ms_cm, sigma_max_ms_cm
        Bounds (inclusive) on the free-variant σ(300 K) extrapolation, mS/cm. Materials
        without a quoted extrapolation (no fit, or Ea not resolved) never match a bound.
    ea_min_ev, ea_max_ev
        Bounds (inclusive) on the free-variant activation energy, eV.
    regime
        ``diffusive`` | ``subdiffusive`` | ``caged`` | ``insufficient``: at least one free
        run has it.
    pinned_verdict
        A category of :data:`VERDICT_CATEGORIES` (``lowers``, ``mixed``, ``raises``,
        ``no significant``, ``none``, ``inconclusive``) or a case-insensitive substring
        of the overall free-vs-pinned verdict.
    isolated_fraction_min
        Lower bound (inclusive) on the isolated-anion fraction of the input cell.
    percolation_dimension
        The highest percolation dimension of the free runs' Li density (0–3), exactly.
    rotation_coupled
        True: polyanions reorient in the free runs and pinning lowers D significantly;
        False: the summary says it is not (summaries without a rotation analysis match
        neither).
    target_met
        True/False: the free variant met ``md.target`` or not (summaries without a target
        match neither).
    core_hours_min, core_hours_max
        Bounds (inclusive) on the material's MD compute, core-hours (summaries without
        compute accounting never match a bound).
    sort
        A field of :data:`SORT_FIELDS` (or an alias ``sigma``/``ea``/``engine``).
    descending
        Sort direction; null values come last either way.
    limit
        At most this many results.

    Returns
    -------
    list of MaterialSummary

    Raises
    ------
    UserInputError
        Bad filter values or sort field.
    SchemaVersionError
        A matching document has an unknown major schema version or is malformed.
    """
    filt = build_filter(
        campaign=campaign,
        formula=formula,
        chemsys=chemsys,
        elements=elements,
        engine=engine,
        sigma_min_ms_cm=sigma_min_ms_cm,
        sigma_max_ms_cm=sigma_max_ms_cm,
        ea_min_ev=ea_min_ev,
        ea_max_ev=ea_max_ev,
        regime=regime,
        pinned_verdict=pinned_verdict,
        isolated_fraction_min=isolated_fraction_min,
        percolation_dimension=percolation_dimension,
        rotation_coupled=rotation_coupled,
        target_met=target_met,
        core_hours_min=core_hours_min,
        core_hours_max=core_hours_max,
    )
    docs = find_summary_documents(source, filt, sort=sort, descending=descending, limit=limit)
    return [parse_summary(d) for d in docs]


def load_summaries(source: Any, campaign: str) -> list[dict[str, Any]]:
    """Summary documents (plain dicts, no ``_id``) of one campaign, by material name."""
    docs = find_summary_documents(source, {"campaign": campaign}, sort="material", descending=False)
    for d in docs:
        parse_summary(d)  # schema check
    return docs


def known_campaigns(source: Any) -> list[str]:
    """Campaign names that have at least one summary."""
    with _summaries(source) as coll:
        return sorted(c for c in coll.distinct("campaign") if isinstance(c, str))


# ----------------------------------------------------------------------------- display


def format_number(x: float | None, digits: int = 3) -> str:
    """``digits`` significant digits, positional for 0.001 ≤ |x| < 1e5 (``—`` for None).

    >>> format_number(1234.5), format_number(0.04567), format_number(2.5e-7)
    ('1230', '0.0457', '2.50e-07')
    """
    if x is None or not math.isfinite(x):
        return "—"
    if x == 0:
        return "0"
    mag = math.floor(math.log10(abs(x)))
    if -3 <= mag < 5:
        decimals = max(0, digits - 1 - mag)
        return f"{round(x, digits - 1 - mag):.{decimals}f}"
    return f"{x:.{digits - 1}e}"


def ea_resolved(summary: MaterialSummary | VariantSummary) -> bool | None:
    """Whether the Ea of a summary (or variant) is resolved (Ea > 2σ); None without Ea.

    Summaries of schema 1.0 have no ``ea_resolved``: it is computed from Ea and its error.
    """
    if summary.ea_resolved is not None:
        return summary.ea_resolved
    from ionflow.analysis.arrhenius import ea_is_resolved

    return ea_is_resolved(summary.ea_ev, summary.ea_err_ev)


def sigma_300k_quoted(summary: MaterialSummary | VariantSummary) -> bool:
    """σ(300 K) is shown: an extrapolation exists and Ea is resolved."""
    return summary.sigma_300k_ms_cm is not None and ea_resolved(summary) is True


def sigma_300k_note(summary: MaterialSummary | VariantSummary) -> str | None:
    """``"Ea not resolved"`` when a σ(300 K) extrapolation exists but is not quoted."""
    v = summary.free if isinstance(summary, MaterialSummary) else summary
    if v.sigma_300k_ms_cm is not None and ea_resolved(summary) is False:
        return "Ea not resolved"
    return None


def regimes_text(summary: MaterialSummary) -> str:
    """Free-run regimes grouped by regime: ``caged 600 K; diffusive 800, 1000 K``."""
    groups: dict[str, list[float]] = {}
    for r in summary.free.runs:
        groups.setdefault(r.regime, []).append(r.temperature_k)
    return (
        "; ".join(f"{reg} {', '.join(f'{t:g}' for t in temps)} K" for reg, temps in groups.items())
        or "—"
    )


# ----------------------------------------------------------------------------- export


#: Flat columns of :func:`summary_row` (CSV export and ``query --format csv``). Not the
#: query fields (:data:`ionflow.query_index.QUERY_FIELDS`) on purpose: every summary value
#: worth a column, derived ones included (σ only when Ea is resolved, verdict category...).
CSV_COLUMNS = (
    "campaign",
    "material",
    "formula",
    "chemsys",
    "elements",
    "mobile_species",
    "engine_md",
    "engine_relax",
    "temperatures_k",
    "n_atoms_supercell",
    "ea_ev",
    "ea_err_ev",
    "ea_resolved",
    "sigma_300k_ms_cm",
    "sigma_300k_low_ms_cm",
    "sigma_300k_high_ms_cm",
    "sigma_300k_low95_ms_cm",
    "sigma_300k_high95_ms_cm",
    "sigma_300k_note",
    "sigma_basis",
    "arrhenius_n_temperatures",
    "arrhenius_note",
    "regimes",
    "n_diffusive_runs",
    "n_subdiffusive_runs",
    "pinned_ea_ev",
    "pinned_ea_err_ev",
    "pinned_sigma_300k_ms_cm",
    "pinned_verdict",
    "pinned_verdict_category",
    "pinned_reason",
    "n_bonded_anions",
    "n_isolated_anions",
    "pinned_indices_count",
    "schema_version",
)


def summary_row(s: MaterialSummary) -> dict[str, Any]:
    """One flat row of :data:`CSV_COLUMNS` (lists joined with ``;``; None → empty).

    σ(300 K) and its intervals only when Ea is resolved (``sigma_300k_note`` says why not).
    """
    quoted = sigma_300k_quoted(s)
    iv95 = s.free.sigma_300k_interval95_ms_cm if quoted else None
    fit = s.free.arrhenius
    p = s.pinned
    row = {
        "campaign": s.campaign,
        "material": s.material,
        "formula": s.formula,
        "chemsys": s.chemsys,
        "elements": ";".join(s.elements),
        "mobile_species": s.mobile_species,
        "engine_md": s.engine_md,
        "engine_relax": s.engine_relax,
        "temperatures_k": ";".join(f"{t:g}" for t in s.temperatures_k),
        "n_atoms_supercell": s.n_atoms_supercell,
        "ea_ev": s.ea_ev,
        "ea_err_ev": s.ea_err_ev,
        "ea_resolved": ea_resolved(s),
        "sigma_300k_ms_cm": s.sigma_300k_ms_cm if quoted else None,
        "sigma_300k_low_ms_cm": s.sigma_300k_low_ms_cm if quoted else None,
        "sigma_300k_high_ms_cm": s.sigma_300k_high_ms_cm if quoted else None,
        "sigma_300k_low95_ms_cm": iv95[0] if iv95 else None,
        "sigma_300k_high95_ms_cm": iv95[1] if iv95 else None,
        "sigma_300k_note": sigma_300k_note(s),
        "sigma_basis": s.sigma_basis,
        "arrhenius_n_temperatures": fit.n_temperatures if fit else 0,
        "arrhenius_note": s.free.arrhenius_note,
        "regimes": ";".join(s.regimes),
        "n_diffusive_runs": sum(r == "diffusive" for r in s.regimes),
        "n_subdiffusive_runs": sum(r == "subdiffusive" for r in s.regimes),
        "pinned_ea_ev": s.pinned_ea_ev,
        "pinned_ea_err_ev": p.ea_err_ev if p else None,
        "pinned_sigma_300k_ms_cm": p.sigma_300k_ms_cm if p and sigma_300k_quoted(p) else None,
        "pinned_verdict": s.pinned_verdict,
        "pinned_verdict_category": verdict_category(s.pinned_verdict),
        "pinned_reason": s.pinned_reason,
        "n_bonded_anions": s.n_bonded_anions,
        "n_isolated_anions": s.n_isolated_anions,
        "pinned_indices_count": s.pinned_indices_count,
        "schema_version": s.schema_version,
    }
    return {k: row[k] for k in CSV_COLUMNS}


def _csv_value(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)  # full precision
    return v


def summaries_to_csv(summaries: Iterable[MaterialSummary], fh: IO[str]) -> int:
    """Write flat CSV rows (header first) to ``fh``; returns the number of rows."""
    writer = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    n = 0
    for s in summaries:
        writer.writerow({k: _csv_value(v) for k, v in summary_row(s).items()})
        n += 1
    return n


def summaries_to_json(summaries: Iterable[MaterialSummary], fh: IO[str]) -> int:
    """Write the full documents as a JSON list to ``fh``; returns the number written."""
    docs = [s.model_dump(mode="json") for s in summaries]
    json.dump(docs, fh, indent=2, ensure_ascii=False)
    fh.write("\n")
    return len(docs)


# ----------------------------------------------------------------------------- job outputs


@dataclass
class RunAnalysis:
    """The stored analysis of one MD run of a summary."""

    variant: str
    temperature_k: float
    analysis: DiffusionAnalysis
    uuid: str | None
    #: the run's other analyses by kind (:data:`ionflow.analysis.ANALYSES`), parsed with
    #: their registered result model; kinds this version does not know are left out
    results: dict[str, Any] = field(default_factory=dict)


def _latest_per_key(docs: Iterable[dict], key) -> dict:
    """Keep, per key, the document with the highest (index, completed_at)."""
    best: dict = {}
    for d in docs:
        k = key(d)
        if k is None:
            continue
        rank = (d.get("index") or 0, str(d.get("completed_at") or ""))
        if k not in best or rank > best[k][0]:
            best[k] = (rank, d)
    return {k: v[1] for k, v in best.items()}


def _query_analyses(store, summary: MaterialSummary) -> list[RunAnalysis]:
    from ionflow.analysis import DiffusionAnalysis

    uuids = {
        r.analysis_uuid
        for v in (summary.free, summary.pinned)
        if v is not None
        for r in v.runs
        if r.analysis_uuid
    }
    criteria: dict[str, Any] = {
        "name": {"$regex": "^analysis "},
        f"metadata.{META_CAMPAIGN}": summary.campaign,
        f"metadata.{META_MATERIAL}": summary.material,
    }
    docs = list(
        store.query(
            criteria, properties=["uuid", "index", "name", "output", "metadata", "completed_at"]
        )
    )
    if uuids and any(d.get("uuid") in uuids for d in docs):
        docs = [d for d in docs if d.get("uuid") in uuids]

    def key(d):
        out, meta = d.get("output") or {}, d.get("metadata") or {}
        variant = out.get("variant") or meta.get(META_VARIANT)
        t = out.get("temperature_k") or meta.get(META_TEMPERATURE_K)
        if variant is None or t is None or not isinstance(out.get("analysis"), dict):
            return None
        return (str(variant), float(t))

    runs = []
    for (variant, t), d in _latest_per_key(docs, key).items():
        try:
            analysis = DiffusionAnalysis.model_validate(d["output"]["analysis"])
        except ValidationError:
            continue
        runs.append(RunAnalysis(variant, t, analysis, d.get("uuid"), run_results(d["output"])))
    runs.sort(key=lambda r: (r.variant != "free", r.variant, r.temperature_k))
    return runs


def run_results(output: dict) -> dict[str, Any]:
    """The other analyses of an analysis job output (``results[kind]``), each parsed with
    the result model its kind registers; unknown kinds, other schema versions, failed and
    unreadable entries are skipped (:func:`ionflow.outputs.parse_results`)."""
    from ionflow.outputs import parse_results

    return parse_results(output.get("results"))


def iter_run_analyses(
    source: Any, summaries: Iterable[MaterialSummary]
) -> Iterator[tuple[MaterialSummary, list[RunAnalysis]]]:
    """(summary, its run analyses) for each summary, over one connection (see below)."""
    with open_source(source) as handle:
        store, owned = handle.jobstore()
        try:
            for s in summaries:
                yield s, _query_analyses(store, s)
        finally:
            if owned:
                with contextlib.suppress(Exception):
                    store.close()


def fetch_run_analyses(source: Any, summary: MaterialSummary) -> list[RunAnalysis]:
    """Analysis job outputs (with their thinned MSD curves) of a summary's runs.

    Reads the JobStore (``outputs``, blobs resolved from the ``data`` store when the
    source is a ResolvedDatabase): documents named ``analysis …`` with
    ``metadata.ionflow_campaign``/``ionflow_material`` of the summary. When the summary
    records analysis uuids, only those jobs are used; several outputs of one
    (variant, temperature) keep the newest (highest index, then ``completed_at``).
    Sorted by variant (free first), then temperature.
    """
    return list(iter_run_analyses(source, [summary]))[0][1]


def _summary_trajectory_sha(
    db, campaign: str, material: str, variant: str, temperature_k: float
) -> str | None:
    """Checksum of the trajectory analysed for the current summary's run (or None)."""
    summary = db[SUMMARY_COLLECTION].find_one(
        {"campaign": campaign, "material": material}, {"free": 1, "pinned": 1}
    )
    runs = ((summary or {}).get(variant) or {}).get("runs") or []
    uuids = [
        r.get("analysis_uuid")
        for r in runs
        if r.get("analysis_uuid") and float(r.get("temperature_k", -1)) == float(temperature_k)
    ]
    if not uuids:
        return None
    out = db[OUTPUTS_COLLECTION].find_one({"uuid": uuids[0]}, {"output.trajectory_sha256": 1})
    return ((out or {}).get("output") or {}).get("trajectory_sha256")


def find_md_output(
    source: Any, *, campaign: str, material: str, variant: str, temperature_k: float
) -> dict[str, Any]:
    """The MD job output of one run (it holds the ``trajectory`` reference).

    Several MD outputs of one (material, variant, T) exist when the MD settings changed
    between submissions: the one analysed for the material's current summary is returned
    (matched by the trajectory checksum its analysis records), else the newest.

    Raises
    ------
    UserInputError
        No such run; the message lists the runs stored for the material.
    """
    return _find_run_output(
        source, campaign, material, variant, temperature_k, "trajectory", "MD run",
        lambda out: (out.get("trajectory") or {}).get("sha256"),
    )  # fmt: skip


def find_density_output(
    source: Any, *, campaign: str, material: str, variant: str, temperature_k: float
) -> dict[str, Any]:
    """The analysis job output of one run that holds a ``density_file`` reference (the
    one of the current summary's run when several exist, as :func:`find_md_output`)."""
    return _find_run_output(
        source, campaign, material, variant, temperature_k, "density_file",
        "analysed run", lambda out: out.get("trajectory_sha256"),
    )  # fmt: skip


def _find_run_output(
    source: Any, campaign: str, material: str, variant: str, temperature_k: float,
    field: str, what: str, sha_of,
) -> dict[str, Any]:  # fmt: skip
    """The newest job output of one run having ``output.<field>`` (see find_md_output)."""
    base = {
        f"metadata.{META_CAMPAIGN}": campaign,
        f"metadata.{META_MATERIAL}": material,
        f"output.{field}": {"$exists": True},
    }
    others: list[dict] = []
    with open_source(source) as handle:
        coll = handle.db[OUTPUTS_COLLECTION]
        proj = {"_id": 0, "uuid": 1, "index": 1, "output": 1, "metadata": 1, "completed_at": 1}
        docs = list(
            coll.find(
                {
                    **base,
                    f"metadata.{META_VARIANT}": variant,
                    f"metadata.{META_TEMPERATURE_K}": float(temperature_k),
                },
                proj,
            )
        )
        if not docs:
            others = list(
                coll.find(
                    base,
                    {"_id": 0, f"metadata.{META_VARIANT}": 1, f"metadata.{META_TEMPERATURE_K}": 1},
                )
            )
        sha = None
        if len(docs) > 1:
            sha = _summary_trajectory_sha(handle.db, campaign, material, variant, temperature_k)
    if sha is not None:
        chosen = [d for d in docs if sha_of(d.get("output") or {}) == sha]
        if chosen:
            docs = chosen
    if docs:
        return _latest_per_key(docs, lambda d: 0)[0]["output"]
    runs = sorted(
        {
            (m.get(META_VARIANT, "?"), float(m.get(META_TEMPERATURE_K) or 0))
            for m in (d.get("metadata") or {} for d in others)
        }
    )
    listed = ", ".join(f"{v} {t:g} K" for v, t in runs) or "none"
    stored = "trajectory" if field == "trajectory" else "density file"
    raise UserInputError(
        f"no {what} {campaign}/{material} {variant} {temperature_k:g} K with a stored "
        f"{stored}; runs stored for this material: {listed}"
    )


def _download(handle: SourceHandle, ref: TrajectoryRef | StoredFileRef, dest: Path) -> Path:
    """The GridFS copy (or the local file) of ``ref`` (a trajectory or a stored file) at
    ``dest``, checksum verified (:func:`ionflow.trajectories.download_file`)."""
    from ionflow.trajectories import BUCKET, TrajectoryChecksumError, TrajectoryRef, download_file

    is_traj = isinstance(ref, TrajectoryRef)
    bucket = BUCKET if is_traj else ref.bucket
    try:
        if download_file(handle.db, ref, dest, bucket) is not None:
            return dest
    except TrajectoryChecksumError as exc:
        raise UserInputError(str(exc)) from None
    if ref.local_path and Path(ref.local_path).is_file():
        return Path(ref.local_path)
    raise UserInputError(
        f"{'trajectory' if is_traj else 'file'} {ref.filename}: not in the database's "
        f"{bucket!r} bucket and the local copy {ref.local_path} does not exist"
    )


def export_density(
    source: Any,
    out: Path | str,
    *,
    campaign: str,
    material: str,
    variant: str = "free",
    temperature_k: float,
) -> tuple[Path, dict]:
    """Write one run's stored density CHGCAR to ``out`` (via ``out.part``, renamed when
    complete and its checksum verified: nothing half-written). Returns (out, reference)."""
    from ionflow.trajectories import StoredFileRef

    out = Path(out)
    found = find_density_output(
        source, campaign=campaign, material=material, variant=variant, temperature_k=temperature_k
    )
    ref = StoredFileRef.model_validate(found["density_file"])
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    try:
        with open_source(source) as handle:
            got = _download(handle, ref, part)
        if got != part:  # the local copy where the job ran
            import hashlib

            data = Path(got).read_bytes()
            if hashlib.sha256(data).hexdigest() != ref.sha256:
                raise UserInputError(f"file {ref.filename}: local copy changed (checksum)")
            part.write_bytes(data)
        part.replace(out)
    finally:
        part.unlink(missing_ok=True)
    return out, ref.model_dump(mode="json")


def export_trajectory_extxyz(
    source: Any,
    out: Path | str,
    *,
    campaign: str,
    material: str,
    variant: str = "free",
    temperature_k: float,
    every: int = 1,
    chunk_frames: int = 256,
) -> int:
    """Write a stored MD trajectory as extended XYZ, one frame at a time.

    The ``.npz`` is streamed from GridFS into a temporary file (checksum verified), then
    read ``chunk_frames`` frames at a time and written frame by frame with ASE, so memory
    stays bounded for long runs. Frame 0 carries ``frame_interval_fs`` (time between the
    *written* frames) and ``temperature_k``, which ``ionflow analyze`` reads back; every
    frame carries ``time_ps``. Pinned atoms become a ``FixAtoms`` constraint
    (``move_mask`` column).

    Parameters
    ----------
    every
        Write every ``every``-th frame.

    Returns
    -------
    int
        Frames written.
    """
    import numpy as np
    from ase import Atoms
    from ase.constraints import FixAtoms
    from ase.io.extxyz import write_extxyz

    from ionflow.analysis.readers import open_trajectory
    from ionflow.trajectories import TrajectoryRef

    if every < 1:
        raise UserInputError(f"every must be ≥ 1, got {every}")
    out = Path(out)
    md = find_md_output(
        source, campaign=campaign, material=material, variant=variant, temperature_k=temperature_k
    )
    ref = TrajectoryRef.model_validate(md["trajectory"])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + ".part")
    n_written = 0
    with tempfile.TemporaryDirectory() as tmp, open_source(source) as handle:
        npz = _download(handle, ref, Path(tmp) / "trajectory.npz")
        src = open_trajectory(str(npz), format="npz")
        info = src.info
        dt_fs = (info.frame_interval_fs or ref.frame_interval_fs) * every
        fixed = info.fixed_atoms
        constraint = (
            FixAtoms(indices=np.flatnonzero(fixed)) if fixed is not None and fixed.any() else None
        )
        i = 0
        with open(tmp_out, "w") as fh:
            for positions, lattices in src.iter_chunks(chunk_frames=chunk_frames):
                for k in range(positions.shape[0]):
                    if i % every == 0:
                        atoms = Atoms(
                            symbols=info.species, positions=positions[k], cell=lattices[k], pbc=True
                        )
                        if constraint is not None:
                            atoms.set_constraint(constraint)
                        atoms.info["time_ps"] = i * (dt_fs / every) / 1000.0
                        if n_written == 0:
                            atoms.info["frame_interval_fs"] = dt_fs
                            atoms.info["temperature_k"] = float(
                                info.temperature_k or ref.temperature_k
                            )
                            atoms.info["ionflow_run"] = f"{campaign}/{material}/{variant}"
                        write_extxyz(fh, [atoms])
                        n_written += 1
                    i += 1
    tmp_out.replace(out)
    return n_written
