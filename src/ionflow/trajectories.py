"""Trajectories in the database: float32 ``.npz`` files in a GridFS bucket.

MD trajectories are far larger than a 16 MB MongoDB document and far too large to
go through JSON. The MD job packs its production (and equilibration) frames into a
compressed ``.npz`` (positions float32, frames × atoms × 3 Å; lattice; species;
fixed_atoms; frame_interval_fs; temperature_k) — the format
:func:`ionflow.analysis.readers.open_trajectory` streams — and puts the file into the
GridFS bucket ``trajectories`` of the JobStore's database. The job output holds only a
:class:`TrajectoryRef` (file id, size, checksum, frame count, and the local path as a
fallback when the database holds no copy, e.g. under mongomock).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from ionflow.names import DENSITY_BUCKET as DENSITY_BUCKET
from ionflow.names import TRAJECTORY_BUCKET

#: GridFS bucket of the trajectories (:data:`ionflow.names.TRAJECTORY_BUCKET`).
BUCKET = TRAJECTORY_BUCKET


class TrajectoryChecksumError(RuntimeError):
    """A downloaded trajectory does not have the checksum its reference records."""


class TrajectoryRef(BaseModel):
    """Where a stored trajectory lives."""

    gridfs_id: str | None = Field(None, description="GridFS file id in the 'trajectories' bucket")
    database: str | None = Field(None, description="Database holding the bucket")
    filename: str = Field(description="Name of the stored .npz")
    local_path: str | None = Field(None, description="Path of the .npz on the machine that ran MD")
    sha256: str = Field(description="Checksum of the .npz bytes")
    size_bytes: int = Field(description="Size of the .npz, bytes")
    n_frames: int = Field(description="Frames in the file")
    n_atoms: int = Field(description="Atoms per frame")
    frame_interval_fs: float = Field(description="Time between frames, fs")
    temperature_k: float = Field(description="Target temperature, K")
    has_velocities: bool = Field(
        False, description="The file also holds 'velocities' (frames × atoms × 3, Å/fs)"
    )


class StoredFileRef(BaseModel):
    """Where a stored file other than a trajectory lives (e.g. a density CHGCAR in the
    ``densities`` bucket): the job output holds this, never the bytes."""

    gridfs_id: str | None = Field(None, description="GridFS file id (None: no database copy)")
    database: str | None = Field(None, description="Database holding the bucket")
    bucket: str = Field(description="GridFS bucket name")
    filename: str = Field(description="Name of the stored file")
    local_path: str | None = Field(None, description="Path of the file where the job ran")
    sha256: str = Field(description="Checksum of the file bytes")
    size_bytes: int = Field(description="Size of the file, bytes")


def write_npz(
    path: Path,
    positions: np.ndarray,
    lattice: np.ndarray,
    species: list[str],
    frame_interval_fs: float,
    temperature_k: float,
    fixed_atoms: np.ndarray | None = None,
    velocities_a_fs: np.ndarray | None = None,
) -> Path:
    """Write the trajectory ``.npz`` (float32 positions and, when given, velocities in Å/fs;
    compressed)."""
    path = Path(path)
    tmp = path.with_suffix(".tmp.npz")
    extra = {}
    if velocities_a_fs is not None:
        extra["velocities"] = np.asarray(velocities_a_fs, dtype=np.float32)  # Å/fs
    np.savez_compressed(
        tmp,
        **extra,
        positions=np.asarray(positions, dtype=np.float32),
        lattice=np.asarray(lattice, dtype=np.float64),
        species=np.asarray(species),
        time_step_fs=np.float64(frame_interval_fs),
        temperature_k=np.float64(temperature_k),
        fixed_atoms=np.zeros(len(species), bool)
        if fixed_atoms is None
        else np.asarray(fixed_atoms),
    )
    tmp.replace(path)
    return path


def traj_to_npz(
    traj_path: Path,
    npz_path: Path,
    frame_interval_fs: float,
    temperature_k: float,
    velocities: bool = True,
):
    """Convert an ASE ``.traj`` written by :mod:`ionflow.md` into the stored ``.npz``
    (with the frames' velocities, float32 Å/fs, when ``velocities`` and the frames carry
    momenta — the vibrational density of states needs them)."""
    from ionflow.analysis.readers import open_trajectory

    src = open_trajectory(str(traj_path))
    info = src.info
    pos = np.empty((info.n_frames, len(info.species), 3), np.float32)
    lat = np.empty((info.n_frames, 3, 3))
    i = 0
    for p, latt in src.iter_chunks(chunk_frames=2048):
        k = p.shape[0]
        pos[i : i + k], lat[i : i + k] = p, latt
        i += k
    lattice = lat[0] if info.constant_lattice else lat
    return write_npz(
        npz_path,
        pos[:i],
        lattice,
        list(info.species),
        frame_interval_fs,
        temperature_k,
        info.fixed_atoms,
        _velocities(traj_path, i) if velocities else None,
    )


def _velocities(traj_path: Path, n_frames: int) -> np.ndarray | None:
    """Velocities (Å/fs, float32) of the first ``n_frames`` frames of an ASE ``.traj``;
    None when a frame has no momenta."""
    from ase import units
    from ase.io import Trajectory

    with Trajectory(str(traj_path)) as traj:
        if len(traj) < n_frames:
            return None
        masses = traj[0].get_masses()[:, None]
        out = None
        for k in range(n_frames):
            atoms = traj[k]
            if "momenta" not in atoms.arrays:
                return None
            v = atoms.arrays["momenta"] / masses * units.fs  # ASE velocity units → Å/fs
            if out is None:
                out = np.empty((n_frames, *v.shape), np.float32)
            out[k] = v
    return out


def _has_member(npz_path: Path, name: str) -> bool:
    import zipfile

    with zipfile.ZipFile(npz_path) as zf:
        return f"{name}.npy" in zf.namelist()


def _database(store):
    """pymongo Database behind a connected JobStore (None for non-Mongo stores)."""
    docs = getattr(store, "docs_store", store)
    coll = getattr(docs, "_collection", None)
    if coll is None:
        docs.connect()
        coll = getattr(docs, "_collection", None)
    db = getattr(coll, "database", None)
    if db is None or type(db).__module__.startswith("mongomock"):
        return None
    return db


def put_npz(store, npz_path: Path, metadata: dict, guard=None) -> TrajectoryRef:
    """Upload ``npz_path`` to GridFS (when the store is a real MongoDB) and describe it.

    A stored trajectory *replaces*: once the new file is complete, earlier files of the same
    job (``metadata["job_uuid"]``; else of the same ``metadata["workdir"]``) are deleted, so
    a rerun or a duplicate run never leaves an orphan file. ``guard`` (the fencing of
    :mod:`ionflow.backends.lease`) is called before the upload and again before the older files are
    deleted; when it raises after the upload, the new file is deleted again.
    """
    from ionflow.analysis.readers import open_trajectory

    info = open_trajectory(str(npz_path)).info
    data = Path(npz_path).read_bytes()
    ref = TrajectoryRef(
        filename=Path(npz_path).name,
        local_path=str(Path(npz_path).resolve()),
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        n_frames=info.n_frames,
        n_atoms=len(info.species),
        frame_interval_fs=info.frame_interval_fs,
        temperature_k=info.temperature_k,
        has_velocities=_has_member(npz_path, "velocities"),
    )
    db = _database(store) if store is not None else None
    if db is not None:
        import gridfs

        if guard is not None:
            guard()
        bucket = gridfs.GridFSBucket(db, bucket_name=BUCKET)
        fid = bucket.upload_from_stream(
            ref.filename, io.BytesIO(data), metadata={**metadata, "sha256": ref.sha256}
        )
        if guard is not None:
            try:
                guard()
            except BaseException:
                with contextlib.suppress(Exception):
                    bucket.delete(fid)
                raise
        _delete_older(db, bucket, fid, metadata)
        ref.gridfs_id, ref.database = str(fid), db.name
    return ref


def put_file(store, path: Path, metadata: dict, bucket_name: str) -> StoredFileRef:
    """Upload ``path`` into the GridFS bucket ``bucket_name`` (when the store is a real
    MongoDB) and describe it; earlier files of the same job (``metadata["job_uuid"]``) in
    that bucket are deleted once the new one is complete (a rerun leaves no orphan)."""
    path = Path(path)
    data = path.read_bytes()
    ref = StoredFileRef(
        bucket=bucket_name,
        filename=path.name,
        local_path=str(path.resolve()),
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
    )
    db = _database(store) if store is not None else None
    if db is not None:
        import gridfs

        bucket = gridfs.GridFSBucket(db, bucket_name=bucket_name)
        fid = bucket.upload_from_stream(
            ref.filename, io.BytesIO(data), metadata={**metadata, "sha256": ref.sha256}
        )
        _delete_older(db, bucket, fid, metadata, bucket_name)
        ref.gridfs_id, ref.database = str(fid), db.name
    return ref


def _delete_older(db, bucket, keep, metadata: dict, bucket_name: str = BUCKET) -> list:
    """Delete the files of the same job (or run directory) other than ``keep``."""
    if metadata.get("job_uuid"):
        query = {"metadata.job_uuid": metadata["job_uuid"]}
    elif metadata.get("workdir"):
        query = {"metadata.workdir": metadata["workdir"]}
    else:
        return []
    old = [
        d["_id"]
        for d in db[f"{bucket_name}.files"].find({**query, "_id": {"$ne": keep}}, {"_id": 1})
    ]
    for fid in old:
        with contextlib.suppress(Exception):  # gone already (a concurrent replace)
            bucket.delete(fid)
    return old


def download_npz(db, ref: TrajectoryRef | dict, dest: Path) -> Path | None:
    """Stream the GridFS copy of ``ref`` from ``db`` into ``dest``, checking its sha256.

    The one place a stored trajectory is read back from the database (the analysis job,
    ``ionflow export-trajectory``). ``db`` is a pymongo ``Database`` (the bucket is read in
    ``ref.database`` when that differs). Returns ``dest``, or ``None`` when the database
    holds no copy (no GridFS id, no ``db``, a mongomock database, the file is gone): the
    caller then falls back to ``ref.local_path``.

    Raises
    ------
    TrajectoryChecksumError
        The downloaded bytes do not match ``ref.sha256``.
    """
    return download_file(db, TrajectoryRef.model_validate(ref), dest, BUCKET)


def download_file(db, ref, dest: Path, bucket_name: str | None = None) -> Path | None:
    """Stream the GridFS copy of ``ref`` (a :class:`TrajectoryRef` or
    :class:`StoredFileRef`; bucket: ``bucket_name``, else ``ref.bucket``) into ``dest``,
    checking its sha256 — :func:`download_npz` for any bucket. ``None`` when the database
    holds no copy."""
    if isinstance(ref, dict):
        ref = StoredFileRef.model_validate(ref)
    if ref.gridfs_id is None or db is None or type(db).__module__.startswith("mongomock"):
        return None
    import gridfs
    from bson import ObjectId

    if ref.database and ref.database != db.name:
        db = db.client[ref.database]
    bucket = gridfs.GridFSBucket(db, bucket_name=bucket_name or ref.bucket)
    try:
        stream = bucket.open_download_stream(ObjectId(ref.gridfs_id))
    except gridfs.errors.NoFile:
        return None
    sha = hashlib.sha256()
    dest = Path(dest)
    with stream, open(dest, "wb") as fh:
        while chunk := stream.read(1 << 20):
            sha.update(chunk)
            fh.write(chunk)
    if sha.hexdigest() != ref.sha256:
        what = "trajectory" if isinstance(ref, TrajectoryRef) else "file"
        raise TrajectoryChecksumError(f"{what} {ref.filename}: checksum mismatch after download")
    return dest


def fetch_npz(ref: TrajectoryRef | dict, dest: Path, store=None) -> Path:
    """Materialise a stored trajectory as a local file (GridFS first, then the local path)."""
    ref = TrajectoryRef.model_validate(ref)
    db = _database(store) if store is not None and ref.gridfs_id is not None else None
    if download_npz(db, ref, Path(dest)) is not None:
        return Path(dest)
    if ref.local_path and Path(ref.local_path).exists():
        return Path(ref.local_path)
    raise FileNotFoundError(
        f"trajectory {ref.filename}: not in the database and {ref.local_path} does not exist"
    )
