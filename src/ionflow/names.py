"""Named constants shared across ionflow: the data-directory default, collection names,
and the metadata keys every job, firework and stored output carries.

One home for each: a module that needs one of these names imports it from here instead of
spelling the string again. Changing a value here changes what existing databases are read
with — they are part of the stored format (see ``docs/results.md``), so don't.

Pure constants: no imports beyond the standard library.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "BLOBS_COLLECTION",
    "CURRENT_COLLECTION",
    "DEFAULT_DATA_DIR",
    "DENSITY_BUCKET",
    "JOBSTORE_ENV_KEY",
    "LEASE_FIELD",
    "LOST_RUN_FIELD",
    "META_CAMPAIGN",
    "META_JOB_UUID",
    "META_KEY",
    "META_MATERIAL",
    "META_STAGE",
    "META_SUBMITTED",
    "META_TEMPERATURE_K",
    "META_VARIANT",
    "OUTPUTS_COLLECTION",
    "QUERY_INDEX_COLLECTION",
    "QUEUE_JOBS_COLLECTION",
    "SUBMISSIONS_COLLECTION",
    "SUMMARY_COLLECTION",
    "TRAJECTORY_BUCKET",
    "WF_FINGERPRINT",
    "WF_PENDING",
    "data_dir_path",
    "spec_field",
]

# ----------------------------------------------------------------------------- project

#: Project data directory when none is given (relative to the current directory): the
#: embedded database server's storage, MD run directories, launcher directories.
DEFAULT_DATA_DIR = "ionflow-data"


def data_dir_path(data_dir: Path | str | None = None) -> Path:
    """The absolute project data directory: ``data_dir``, else ``./ionflow-data``."""
    path = Path(data_dir) if data_dir is not None else Path.cwd() / DEFAULT_DATA_DIR
    return path.expanduser().resolve()


# ----------------------------------------------------------------------------- JobStore db

#: jobflow's job outputs: one document per (job ``uuid``, ``index``).
OUTPUTS_COLLECTION = "outputs"
#: GridFS collection of the JobStore's ``"data"`` additional store.
BLOBS_COLLECTION = "outputs_blobs"
#: GridFS bucket of the float32 ``.npz`` trajectories (:mod:`ionflow.trajectories`).
TRAJECTORY_BUCKET = "trajectories"
#: GridFS bucket of the analysis job's density files (CHGCAR; ionflow export-density)
DENSITY_BUCKET = "densities"
#: One :class:`~ionflow.summary.MaterialSummary` per (campaign, material).
SUMMARY_COLLECTION = "summaries"
#: The current summary key of each (campaign, material), written at every submission.
CURRENT_COLLECTION = "summaries_current"
#: The columnar copy of the summaries' query fields (:mod:`ionflow.query_index`).
QUERY_INDEX_COLLECTION = "summaries_query_index"

# ----------------------------------------------------------------------------- FireWorks db

#: One document per submission: what was added and what was reused.
SUBMISSIONS_COLLECTION = "ionflow_submissions"
#: Every Slurm queue job ionflow submitted (job id, profile, campaign, launcher directory).
QUEUE_JOBS_COLLECTION = "ionflow_queue_jobs"

# ----------------------------------------------------------------------------- metadata keys
# Set on every job of a campaign flow (jobflow ``metadata``); FireWorks copies them into the
# firework's ``spec`` and jobflow into the ``outputs`` document's ``metadata``.

META_CAMPAIGN = "ionflow_campaign"
META_MATERIAL = "ionflow_material"
#: ``"free"`` or ``"pinned"`` (MD and analysis jobs, Arrhenius fits).
META_VARIANT = "ionflow_variant"
#: Target temperature of an MD or analysis job (float, K).
META_TEMPERATURE_K = "ionflow_temperature_k"
#: ``relax`` | ``supercell`` | ``md`` | ``analysis`` | ``arrhenius`` | ``summary``.
META_STAGE = "ionflow_stage"
#: Reuse key of the job (a hash of everything its result depends on).
META_KEY = "ionflow_key"
#: The job's uuid (also kept by a replacement job).
META_JOB_UUID = "ionflow_job_uuid"
#: When the submission that added the job ran (ISO time).
META_SUBMITTED = "ionflow_submitted"

# Workflow metadata (FireWorks ``workflows`` documents).
#: The workflow's fireworks are not all written yet (an interrupted submission).
WF_PENDING = "ionflow_pending"
#: The key of the material's summary job when the workflow was added.
WF_FINGERPRINT = "ionflow_fingerprint"

# Worker side.
#: FWorker ``env`` key holding the JobStore (object) or the path to a ``jobstore.json``.
JOBSTORE_ENV_KEY = "ionflow_jobstore"
#: Field of a FireWorks ``launches`` document: who holds the launch (the lease).
LEASE_FIELD = "ionflow_lease"
#: Key of ``action.stored_data`` of a launch closed as lost: the reason.
LOST_RUN_FIELD = "ionflow_lost_run"


def spec_field(key: str) -> str:
    """The dotted field of a metadata key in a FireWorks document: ``spec.<key>``."""
    return f"spec.{key}"
