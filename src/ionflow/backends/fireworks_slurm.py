"""The FireWorks-Slurm backend: a campaign on a Slurm cluster through FireWorks — profiles,
queue launches, lost runs.

It shares the LaunchPad, the submission and the local status with
:class:`~ionflow.backends.fireworks_local.FireWorksLocal` (:class:`FireWorksSlurm` is a
subclass); what differs is who runs the jobs (queue jobs of ``rlaunch`` workers, submitted
by :meth:`FireWorksSlurm.run`) and how a lost run is found (Slurm's view as well as the
workers' leases).

The pieces
----------
*Profiles* (``slurm/profiles/<name>/``) hold a FireWorks ``my_qadapter.yaml`` (a
:class:`~fireworks.user_objects.queue_adapters.common_adapter.CommonAdapter`: nodes, ntasks,
walltime, partition, account, ``pre_rocket`` lines, the ``rlaunch`` line) and a
``my_fworker.yaml`` template (category, name, extra query/env). Every firework of a campaign
carries ``spec._category`` = ``"relax"`` | ``"md"`` | ``"analysis"``; a profile's workers use
``FWorker(category=<profile>)`` and so pull only their kind. The ``rocket_launch`` line may
use the placeholders ``{rlaunch}`` (the ``rlaunch`` of this Python environment),
``{launchpad}``, ``{fworker}`` (the worker files written for the profile) and ``{timeout}``
(seconds: the walltime minus ``ionflow.stop_pulling_before_end``), e.g.
``{rlaunch} -l {launchpad} -w {fworker} rapidfire --nlaunches 0 --max_loops 1 --timeout
{timeout}``: the job keeps pulling fireworks of its category until there are none or the
timeout is reached, so it never starts a job it has no time for. A job that *is* cut by the
walltime loses at most one checkpoint interval (~100 MD steps): it is detected as lost
(:func:`recover`) and its rerun resumes from the checkpoint of its stable working directory.

*Launching* (:func:`launch`) writes the worker files with
:func:`ionflow.backends.fw_tasks.write_worker_files` (mode 0600; the JobStore is named by
the FWorker env, never stored in a workflow) and submits queue jobs with FireWorks'
``launch_rocket_to_queue`` (what ``qlaunch singleshot`` calls) in non-reservation mode. It
does not use ``queue_launcher.rapidfire``: that loop swallows every exception, sleeps
``QUEUE_UPDATE_INTERVAL`` between submissions and, with ``nlaunches=0``, keeps submitting a
job per READY firework until ``njobs_queue`` is reached (READY fireworks stay READY while their
jobs are pending). :func:`launch` submits ``min(max_jobs - active jobs, READY fireworks -
pending jobs)`` jobs and records each one (Slurm job id, profile, campaign, launcher
directory) in the ``ionflow_queue_jobs`` collection of the FireWorks database, which is how a
RUNNING firework is mapped to its Slurm job: its launch directory is the job's launcher
directory (``singleshot``) or a ``launcher_*`` directory inside it (``rapidfire``).

*Recovery* (:func:`recover`): a RUNNING firework is lost when Slurm no longer runs its job
(``squeue``; scancel, walltime, node failure, a worker that lost its database) -- found at
once, without waiting for FireWorks' ping to expire -- or when the lease of its ionflow
worker has expired (:mod:`ionflow.backends.lease`: the worker renews its launch's FireWorks ping every
``IONFLOW_LEASE_PING_S``; lost after the lease it recorded, 5 min by default, without one),
or, with ``expiration_secs``, when its launch has not pinged for that long (FireWorks
``detect_lostruns``; FireWorks' own ping interval is ``PING_TIME_SECS``, one hour by
default) -- but never while an ionflow worker's lease is live. Lost fireworks are rerun
(``rerun_fw`` -> READY) and their abandoned launch is marked FIZZLED with the reason in
``action.stored_data``; the stale worker, if it still runs, finds its lease gone and stops
writing.

Gotchas
-------
* The order of the three reads in :func:`recover` matters: RUNNING fireworks first, then the
  Slurm snapshot, then the fireworks again. A job submitted after the snapshot cannot run a
  firework read before it, and a firework that completes after the snapshot is skipped.
* ``squeue`` failing (controller down, not on a login node) never makes anything lost.
* A worker holds the database address it read at start: after the database moved (the
  embedded server picks a new port when restarted) pending jobs read the rewritten worker
  files, but running jobs fail at their next database access and are recovered as lost runs.
* FireWorks' template drops every script line that still contains ``$$`` after
  substitution: do not use the shell's ``$$`` in ``pre_rocket``.
"""

from __future__ import annotations

import contextlib
import datetime
import getpass
import io
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import yaml

from ionflow.backends.base import CampaignStatus, RecoveryReport, RunReport
from ionflow.backends.fireworks_local import FireWorksLocal
from ionflow.backends.fw_tasks import open_launchpad
from ionflow.backends.lease import LostRun
from ionflow.errors import UserInputError
from ionflow.names import LEASE_FIELD, META_CAMPAIGN, META_MATERIAL
from ionflow.names import QUEUE_JOBS_COLLECTION as JOBS_COLLECTION

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from fireworks import FWorker, LaunchPad

    from ionflow.store import ResolvedDatabase

__all__ = [
    "ACTIVE_SLURM_STATES",
    "JOBS_COLLECTION",
    "FireWorksSlurm",
    "PROFILES",
    "LaunchReport",
    "LostRun",
    "RecoveryReport",
    "SlurmProfile",
    "SlurmSnapshot",
    "campaign_overview",
    "default_profiles_dir",
    "launch",
    "launchpad_file_warning",
    "load_profile",
    "parse_walltime",
    "recover",
    "slurm_queue",
    "spec_uri_warning",
]

#: The profiles shipped in ``slurm/profiles`` (one per firework category).
PROFILES = ("relax", "md", "analysis")
# JOBS_COLLECTION (in the FireWorks database) records every queue job ionflow submitted:
# ionflow.names.QUEUE_JOBS_COLLECTION.
#: Slurm job states in which the job's processes may still run (or will run).
ACTIVE_SLURM_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "SUSPENDED",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "STOPPED",
        "RESV_DEL_HOLD",
    }
)
PROFILES_DIR_ENV = "IONFLOW_PROFILES_DIR"
_QADAPTER_FILE = "my_qadapter.yaml"
_FWORKER_FILE = "my_fworker.yaml"
_LAUNCHERS_PER_BLOCK = 500
_PLACEHOLDERS = ("{rlaunch}", "{launchpad}", "{fworker}", "{timeout}")

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- profiles


def parse_walltime(value: str | int | float | None) -> int | None:
    """Seconds of a Slurm time limit (``None``: no limit); raises ``ValueError`` if ``value``
    is not one.

    ``value`` is a Slurm ``--time`` text (:func:`ionflow.slurm_time.slurm_seconds`), a
    number of minutes, or ``None``.
    """
    from ionflow.slurm_time import slurm_seconds

    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(round(float(value) * 60))
    try:
        return slurm_seconds(str(value))
    except ValueError:
        raise ValueError(f"not a Slurm time limit: {value!r}") from None


def default_profiles_dir() -> Path:
    """Where profiles are looked up when ``--profiles-dir`` is not given.

    ``$IONFLOW_PROFILES_DIR``, else ``./slurm/profiles`` when it exists, else the
    ``slurm/profiles`` of the ionflow source tree this module belongs to.
    """
    env = os.environ.get(PROFILES_DIR_ENV)
    if env:
        return Path(env).expanduser()
    here = Path.cwd() / "slurm" / "profiles"
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[3] / "slurm" / "profiles"


@dataclass
class SlurmProfile:
    """A cluster profile: a FireWorks queue adapter and worker template for one job kind.

    Attributes
    ----------
    name
        Profile name (directory name), e.g. ``"md"``.
    directory
        The profile directory.
    qadapter
        ``my_qadapter.yaml`` without its ``ionflow`` section (CommonAdapter parameters).
    fworker
        ``my_fworker.yaml`` (``name``, ``category``, ``query``, ``env``).
    stop_pulling_before_end_s
        Workers stop pulling new fireworks this long before the walltime ends.
    """

    name: str
    directory: Path
    qadapter: dict[str, Any]
    fworker: dict[str, Any] = field(default_factory=dict)
    stop_pulling_before_end_s: int | None = None

    @property
    def category(self) -> str | list[str]:
        """FireWorks category the workers pull (default: the profile name)."""
        return self.fworker.get("category") or self.name

    @property
    def walltime_s(self) -> int | None:
        """The profile's walltime in seconds (``None``: no limit)."""
        return parse_walltime(self.qadapter.get("walltime"))

    @property
    def q_type(self) -> str:
        """Queue type (``SLURM``)."""
        return str(self.qadapter.get("_fw_q_type", "SLURM"))

    @property
    def job_name(self) -> str:
        """Queue job name."""
        return str(self.qadapter.get("job_name") or f"ionflow-{self.name}")

    def rlaunch_timeout_s(self) -> int | None:
        """Seconds after which workers stop pulling new fireworks (``None``: never).

        The walltime minus ``ionflow.stop_pulling_before_end`` (default: 10 % of the
        walltime, at least 60 s and at most 30 min), never less than 60 s.
        """
        wall = self.walltime_s
        if wall is None:
            return None
        margin = self.stop_pulling_before_end_s
        if margin is None:
            margin = min(max(60, wall // 10), 1800)
        return max(60, wall - margin)

    def rocket_launch(self, rlaunch: str, launchpad: Path, fworker: Path) -> str:
        """The ``rocket_launch`` line with its placeholders filled in."""
        line = str(self.qadapter.get("rocket_launch") or "")
        if not line:
            line = "{rlaunch} -l {launchpad} -w {fworker} singleshot"
        timeout = self.rlaunch_timeout_s()
        if timeout is None:
            line = re.sub(r"\s*--timeout[ =]\{timeout\}", "", line)
        values = {
            "{rlaunch}": _shell_quote(rlaunch),
            "{launchpad}": _shell_quote(str(launchpad)),
            "{fworker}": _shell_quote(str(fworker)),
            "{timeout}": str(timeout),
        }
        for key in _PLACEHOLDERS:
            line = line.replace(key, values[key])
        return line

    def adapter(self, rlaunch: str, launchpad: Path, fworker: Path, *, logdir: Path | None = None):
        """A FireWorks ``CommonAdapter`` for this profile and these worker files."""
        from fireworks.user_objects.queue_adapters.common_adapter import CommonAdapter

        params = {k: v for k, v in self.qadapter.items() if not k.startswith("_fw_")}
        params["rocket_launch"] = self.rocket_launch(rlaunch, launchpad, fworker)
        params.setdefault("job_name", self.job_name)
        if logdir is not None:
            params.setdefault("logdir", str(logdir))
        template = self.qadapter.get("_fw_template_file")
        if template is not None and not Path(template).is_absolute():
            template = str(self.directory / template)
        return CommonAdapter(
            q_type=self.q_type,
            q_name=self.qadapter.get("_fw_q_name"),
            template_file=template,
            **params,
        )


def _shell_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def load_profile(name: str, profiles_dir: Path | str | None = None) -> SlurmProfile:
    """Read ``<profiles_dir>/<name>/my_qadapter.yaml`` (and ``my_fworker.yaml`` if present).

    Parameters
    ----------
    name
        Profile name.
    profiles_dir
        Directory of profiles; default :func:`default_profiles_dir`.

    Returns
    -------
    SlurmProfile

    Raises
    ------
    UserInputError
        Missing profile, unreadable YAML, or invalid walltime / ionflow settings.
    """
    root = Path(profiles_dir).expanduser() if profiles_dir else default_profiles_dir()
    directory = root / name
    qfile = directory / _QADAPTER_FILE
    if not qfile.is_file():
        known = sorted(p.parent.name for p in root.glob(f"*/{_QADAPTER_FILE}"))
        raise UserInputError(
            f"profile {name!r}: {qfile} not found"
            + (f" (profiles in {root}: {', '.join(known)})" if known else "")
        )
    qadapter = _read_yaml(qfile)
    fworker = _read_yaml(directory / _FWORKER_FILE) if (directory / _FWORKER_FILE).exists() else {}
    extra = qadapter.pop("ionflow", None) or {}
    if not isinstance(extra, dict):
        raise UserInputError(f"{qfile}: 'ionflow' must be a mapping")
    unknown = set(extra) - {"stop_pulling_before_end"}
    if unknown:
        raise UserInputError(
            f"{qfile}: unknown key(s) under 'ionflow': {', '.join(sorted(unknown))}"
        )
    try:
        margin = extra.get("stop_pulling_before_end")
        margin_s = parse_walltime(margin) if isinstance(margin, str) else margin
        if isinstance(margin, int | float) and not isinstance(margin, bool):
            margin_s = int(margin)  # a plain number here means seconds
        profile = SlurmProfile(name, directory, qadapter, fworker, margin_s)
        profile.rlaunch_timeout_s()
    except ValueError as exc:
        raise UserInputError(f"{qfile}: {exc}") from None
    line = str(qadapter.get("rocket_launch") or "")
    if line and "rlaunch" not in line:
        raise UserInputError(f"{qfile}: rocket_launch must run rlaunch (got {line!r})")
    return profile


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UserInputError(f"{path}: cannot read it as YAML ({type(exc).__name__})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: expected a mapping")
    return data


# ----------------------------------------------------------------------------- secrets


def launchpad_file_warning(path: Path | str | None) -> str | None:
    """A warning if a launchpad file holding a password is readable by group or others.

    Parameters
    ----------
    path
        A FireWorks ``my_launchpad.yaml`` (``None``: nothing to check).

    Returns
    -------
    str or None
        The warning (names the file and the fix, never the password), or ``None``.
    """
    if path is None:
        return None
    path = Path(path).expanduser()
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError:
        return None
    if not mode & (stat.S_IRWXG | stat.S_IRWXO):
        return None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    has_secret = False
    if isinstance(data, dict):
        host = str(data.get("host") or "")
        has_secret = bool(data.get("password")) or bool(re.search(r"://[^/@:]+:[^/@]+@", host))
        kwargs = data.get("mongoclient_kwargs") or {}
        if isinstance(kwargs, dict):
            has_secret = has_secret or any(
                "password" in str(k).lower() and v for k, v in kwargs.items()
            )
    else:
        has_secret = "password" in text.lower()
    if not has_secret:
        return None
    who = (
        "group and others"
        if mode & stat.S_IRWXG and mode & stat.S_IRWXO
        else ("its group" if mode & stat.S_IRWXG else "other users")
    )
    return (
        f"{path} holds a database password and is readable by {who} "
        f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
    )


def spec_uri_warning(uri: str | None, spec_file: Path | str) -> str | None:
    """A warning if ``execution.db_uri`` of a campaign file carries a password."""
    if uri and re.search(r"://[^/@:]+:[^/@]+@", uri):
        return (
            f"{spec_file}: execution.db_uri holds a password; put the URI in an environment "
            "variable and name it with execution.db_uri_env (or use a launchpad file, mode 600)"
        )
    return None


# ----------------------------------------------------------------------------- Slurm view


class SlurmSnapshot(dict):
    """``squeue`` result: job id -> state, with the time the query started (``taken_at``).

    Jobs submitted after ``taken_at`` are missing from it without having ended.
    """

    def __init__(self, states: dict[str, str] | None = None, taken_at: float | None = None):
        super().__init__(states or {})
        self.taken_at = time.time() if taken_at is None else taken_at


def slurm_queue(
    user: str | None = None, *, run: Callable[..., Any] = subprocess.run
) -> SlurmSnapshot | None:
    """Slurm's view of the user's jobs: job id -> state (``squeue -t all``).

    Parameters
    ----------
    user
        Whose jobs (default: the current user).
    run
        ``subprocess.run`` (replaceable in tests).

    Returns
    -------
    dict or None
        Job ids (str) to Slurm states (``RUNNING``, ``PENDING``, ``COMPLETED`` for jobs that
        ended within ``MinJobAge``...). ``None`` when ``squeue`` is missing or fails: the
        caller must then not treat any job as gone.
    """
    exe = shutil.which("squeue")
    if exe is None:
        return None
    cmd = [exe, "-h", "-t", "all", "-o", "%i|%T", "-u", user or getpass.getuser()]
    taken_at = time.time()
    try:
        proc = run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    out = SlurmSnapshot(taken_at=taken_at)
    for line in proc.stdout.splitlines():
        job_id, sep, state = line.strip().partition("|")
        if sep:
            out[job_id.strip()] = state.strip().split()[0] if state.strip() else "UNKNOWN"
    return out


def slurm_final_states(
    job_ids: Iterable[str], *, run: Callable[..., Any] = subprocess.run
) -> dict[str, str]:
    """Best-effort final states of ended jobs: ``sacct``, else the ``jobcomp/filetxt`` log.

    Returns only what could be found (``{}`` without accounting or a job completion log).
    """
    ids = sorted({str(j) for j in job_ids})
    if not ids:
        return {}
    out: dict[str, str] = {}
    sacct = shutil.which("sacct")
    if sacct:
        cmd = [sacct, "-n", "-X", "-P", "-o", "JobIDRaw,State", "-j", ",".join(ids)]
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            proc = run(cmd, capture_output=True, text=True, timeout=60, check=False)
            if proc.returncode == 0:
                for line in proc.stdout.splitlines():
                    job_id, _, state = line.partition("|")
                    if job_id.strip() in ids and state.strip():
                        out[job_id.strip()] = state.split()[0]
    missing = [j for j in ids if j not in out]
    scontrol = shutil.which("scontrol")
    if missing and scontrol:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            proc = run(
                [scontrol, "show", "config"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            conf = dict(
                (k.strip(), v.strip())
                for k, _, v in (line.partition("=") for line in proc.stdout.splitlines())
            )
            loc = conf.get("JobCompLoc", "")
            if conf.get("JobCompType") == "jobcomp/filetxt" and loc and os.path.isfile(loc):
                out.update(_jobcomp_states(Path(loc), set(missing)))
    return out


def _jobcomp_states(path: Path, wanted: set[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    with contextlib.suppress(OSError), open(path, errors="replace") as fh:
        for line in fh:
            m = re.search(r"\bJobId=(\S+).*?\bJobState=(\S+)", line)
            if m and m.group(1) in wanted:
                out[m.group(1)] = m.group(2)
    return out


# ----------------------------------------------------------------------------- launching


@dataclass
class LaunchReport:
    """What :func:`launch` did for one profile."""

    profile: str
    submitted: list[str] = field(default_factory=list)
    ready: int = 0
    pending_jobs: int = 0
    active_jobs: int = 0
    worker_dir: Path | None = None
    errors: list[str] = field(default_factory=list)
    planned: int = 0  # jobs to submit (what a dry run would submit)


def worker_dir(data_dir: Path, profile: str, campaign: str | None) -> Path:
    """Directory of a profile's worker files (per campaign: the FWorker query names it)."""
    return Path(data_dir) / "hpc" / (campaign or "_all") / profile


def _worker_identity(profile: SlurmProfile, campaign: str | None) -> tuple[str, dict[str, Any]]:
    """(FWorker name, FWorker query) of a profile's workers for ``campaign``."""
    query = dict(profile.fworker.get("query") or {})
    if isinstance(query, str):
        import json

        query = json.loads(query)
    if campaign is not None:
        query[f"spec.{META_CAMPAIGN}"] = campaign
    return str(profile.fworker.get("name") or f"ionflow-{profile.name}"), query


def prepare_worker(
    db: ResolvedDatabase, profile: SlurmProfile, data_dir: Path, campaign: str | None
) -> tuple[dict[str, Path], FWorker]:
    """Write a profile's worker files (mode 0600) and return them with its FWorker.

    The FWorker pulls ``spec._category`` = the profile's category and, when ``campaign`` is
    given, only that campaign's fireworks. ``env`` entries of the profile's
    ``my_fworker.yaml`` are kept; ``ionflow_jobstore`` always names the written
    ``jobstore.json``.
    """
    from fireworks import FWorker

    from ionflow.backends.fw_tasks import write_fworker_file, write_worker_files
    from ionflow.names import JOBSTORE_ENV_KEY

    name, query = _worker_identity(profile, campaign)
    directory = worker_dir(data_dir, profile.name, campaign)
    paths = write_worker_files(db, directory, name=name, category=profile.category, query=query)
    env = {k: v for k, v in (profile.fworker.get("env") or {}).items() if k != JOBSTORE_ENV_KEY}
    fworker = FWorker.from_file(str(paths["fworker"]))
    if env:
        fworker.env = {**env, **fworker.env}
        write_fworker_file(paths["fworker"], fworker)
    return paths, fworker


def _rlaunch_executable() -> str:
    candidate = Path(sys.executable).parent / "rlaunch"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("rlaunch") or "rlaunch"


def _jobs(lp: LaunchPad):
    return lp.db[JOBS_COLLECTION]


def _refresh_job_states(lp: LaunchPad, queue: dict[str, str] | None) -> dict[str, str]:
    """Slurm states of ionflow's unfinished queue jobs; records those that ended.

    A job missing from the snapshot has ended only if it was submitted before the snapshot.
    """
    coll = _jobs(lp)
    states: dict[str, str] = {}
    if queue is None:
        return states
    now = _now()
    taken_at = getattr(queue, "taken_at", time.time())
    for rec in coll.find({"ended": {"$exists": False}}, {"job_id": 1, "submitted_ts": 1}):
        state = queue.get(rec["job_id"])
        if state is None and rec.get("submitted_ts", 0.0) >= taken_at:
            continue  # submitted after the snapshot
        if state is None or state not in ACTIVE_SLURM_STATES:
            coll.update_one(
                {"_id": rec["_id"]}, {"$set": {"ended": now, "last_state": state or "GONE"}}
            )
        else:
            states[rec["job_id"]] = state
    return states


def _has_launch(lp: LaunchPad, launcher_dir: str) -> bool:
    """Whether a worker of the job in ``launcher_dir`` has checked out a firework."""
    prefix = "^" + re.escape(launcher_dir.rstrip("/")) + "(/|$)"
    return lp.launches.find_one({"launch_dir": {"$regex": prefix}}, {"_id": 1}) is not None


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def launch(
    db: ResolvedDatabase,
    profile: SlurmProfile,
    data_dir: Path | str,
    *,
    campaign: str | None = None,
    max_jobs: int = 1,
    dry_run: bool = False,
    queue: dict[str, str] | None = None,
    lp: LaunchPad | None = None,
) -> LaunchReport:
    """Submit queue jobs of ``profile`` for the READY fireworks of its category.

    Parameters
    ----------
    db
        The campaign's database.
    profile
        The cluster profile.
    data_dir
        Project directory (shared with the compute nodes): worker files go to
        ``hpc/<campaign>/<profile>/``, queue scripts and job output to
        ``hpc/launches/<profile>/block_*/launcher_*/``.
    campaign
        Restrict the workers to this campaign (``None``: any firework of the category).
    max_jobs
        At most this many jobs of this profile (and campaign) pending or running at once.
    dry_run
        Count only; submit nothing and write nothing (no worker file: they hold the
        database credentials).
    queue
        A :func:`slurm_queue` snapshot to reuse (default: taken here).
    lp
        LaunchPad to use (default: a new one on ``db``, closed afterwards).

    Returns
    -------
    LaunchReport
        Submitted job ids, READY fireworks, pending and active jobs before submitting.
    """
    data_dir = Path(data_dir).resolve()
    with open_launchpad(db, lp) as pad:
        return _launch(db, pad, profile, data_dir, campaign, max_jobs, dry_run, queue)


def _launch(db, lp, profile, data_dir, campaign, max_jobs, dry_run, queue) -> LaunchReport:
    from fireworks.queue.queue_launcher import launch_rocket_to_queue
    from fireworks.utilities.fw_utilities import create_datestamp_dir

    if dry_run:  # count only: no worker file (they hold the database credentials) is written
        from fireworks import FWorker

        name, query = _worker_identity(profile, campaign)
        fworker = FWorker(name=name, category=profile.category, query=query)
        report = LaunchReport(profile.name, worker_dir=worker_dir(data_dir, profile.name, campaign))
    else:
        paths, fworker = prepare_worker(db, profile, data_dir, campaign)
        report = LaunchReport(profile.name, worker_dir=paths["fworker"].parent)
    report.ready = lp.fireworks.count_documents({**fworker.query, "state": "READY"})
    if queue is None:
        queue = slurm_queue()
    states = _refresh_job_states(lp, queue)
    mine = {"profile": profile.name, "campaign": campaign, "ended": {"$exists": False}}
    mine_ids = [r["job_id"] for r in _jobs(lp).find(mine, {"job_id": 1})]
    if queue is None:  # no Slurm view: trust the records (an over-estimate of what is active)
        states = {j: "UNKNOWN" for j in mine_ids}
    report.active_jobs = sum(1 for j in mine_ids if j in states)
    report.pending_jobs = sum(1 for j in mine_ids if states.get(j) in ("PENDING", "UNKNOWN"))
    # a job that runs but has not checked out a firework yet will take a READY one too
    for rec in _jobs(lp).find(
        {**mine, "job_id": {"$in": mine_ids}}, {"job_id": 1, "launcher_dir": 1}
    ):
        if states.get(rec["job_id"]) in ("CONFIGURING", "RUNNING") and not _has_launch(
            lp, rec["launcher_dir"]
        ):
            report.pending_jobs += 1
    n = min(max_jobs - report.active_jobs, report.ready - report.pending_jobs)
    report.planned = max(n, 0)
    if dry_run or n <= 0:
        return report
    launches = data_dir / "hpc" / "launches" / profile.name
    launches.mkdir(parents=True, exist_ok=True)
    adapter = profile.adapter(
        _rlaunch_executable(), paths["launchpad"], paths["fworker"], logdir=launches
    )
    quiet = logging.getLogger("ionflow.hpc.fireworks")
    blocks = sorted(launches.glob("block_*"))
    if blocks and len(list(blocks[-1].glob("launcher_*"))) + n <= _LAUNCHERS_PER_BLOCK:
        block = str(blocks[-1])
    else:
        block = create_datestamp_dir(str(launches), quiet, prefix="block_")
    for _ in range(n):
        launcher = create_datestamp_dir(block, quiet, prefix="launcher_")
        err = io.StringIO()
        with contextlib.redirect_stdout(err), contextlib.redirect_stderr(err):
            job_id = launch_rocket_to_queue(
                lp, fworker, adapter, launcher, reserve=False, strm_lvl="CRITICAL"
            )
        if not job_id:
            report.errors.append(
                f"{profile.name}: submitting {launcher}/FW_submit.script failed"
                + (" (no READY firework left)" if job_id is None else "; see the queue log in ")
                + ("" if job_id is None else str(launches))
            )
            break
        _jobs(lp).insert_one(
            {
                "job_id": str(job_id),
                "profile": profile.name,
                "campaign": campaign,
                "launcher_dir": str(Path(launcher).resolve()),
                "q_type": profile.q_type,
                "job_name": adapter.get("job_name"),
                "submitted_at": _now(),
                "submitted_ts": time.time(),
            }
        )
        report.submitted.append(str(job_id))
    return report


# ----------------------------------------------------------------------------- recovery


def _campaign_query(campaign: str | None) -> dict[str, Any]:
    return {f"spec.{META_CAMPAIGN}": campaign} if campaign else {}


def _job_of_launches(lp: LaunchPad, launches: list[dict[str, Any]]) -> dict[int, str]:
    """launch_id -> queue job id (reservation id, or the launcher directory's record)."""
    out: dict[int, str] = {}
    dirs: dict[str, list[int]] = {}
    for launch_doc in launches:
        lid = launch_doc["launch_id"]
        for entry in reversed(launch_doc.get("state_history") or []):
            if entry.get("reservation_id"):
                out[lid] = str(entry["reservation_id"])
                break
        if lid in out or not launch_doc.get("launch_dir"):
            continue
        d = Path(launch_doc["launch_dir"])
        for cand in (d, d.parent):
            dirs.setdefault(str(cand), []).append(lid)
    if dirs:
        for rec in _jobs(lp).find(
            {"launcher_dir": {"$in": list(dirs)}}, {"job_id": 1, "launcher_dir": 1}
        ):
            for lid in dirs[rec["launcher_dir"]]:
                out.setdefault(lid, str(rec["job_id"]))
    return out


def recover(
    db: ResolvedDatabase,
    *,
    campaign: str | None = None,
    expiration_secs: float | None = None,
    dry_run: bool = False,
    queue_view: Callable[[], dict[str, str] | None] = slurm_queue,
    lp: LaunchPad | None = None,
) -> RecoveryReport:
    """Find lost runs of ``campaign`` and rerun them (READY again).

    Parameters
    ----------
    db
        The campaign's database.
    campaign
        Restrict to this campaign (``None``: every firework on the LaunchPad).
    expiration_secs
        Also count as lost a RUNNING launch that has not pinged for this long (FireWorks
        ``detect_lostruns``; FireWorks' own pings come every ``PING_TIME_SECS``, 3600 s by
        default, so use more than that for other tools' workers). ``None``: Slurm's view and
        the leases of ionflow workers decide. A launch whose ionflow lease is live is never
        lost.
    dry_run
        Report, change nothing.
    queue_view
        Returns the Slurm snapshot (job id -> state) or ``None`` if unavailable.
    lp
        LaunchPad to use (default: a new one on ``db``, closed afterwards).

    Returns
    -------
    RecoveryReport
    """
    with open_launchpad(db, lp) as pad:
        return _recover(pad, campaign, expiration_secs, dry_run, queue_view)


def _recover(lp, campaign, expiration_secs, dry_run, queue_view) -> RecoveryReport:
    cq = _campaign_query(campaign)
    report = RecoveryReport(dry_run=dry_run)
    # 1. RUNNING/RESERVED fireworks and their last launch -- before the Slurm snapshot
    before = {
        fw["fw_id"]: fw
        for fw in lp.fireworks.find(
            {**cq, "state": {"$in": ["RUNNING", "RESERVED"]}},
            {"fw_id": 1, "name": 1, "state": 1, "launches": 1, f"spec.{META_MATERIAL}": 1},
        )
    }
    report.running_checked = sum(1 for fw in before.values() if fw["state"] == "RUNNING")
    last_launch = {fid: (fw.get("launches") or [None])[-1] for fid, fw in before.items()}
    launch_docs = list(
        lp.launches.find(
            {"launch_id": {"$in": [lid for lid in last_launch.values() if lid is not None]}},
            {
                "launch_id": 1,
                "launch_dir": 1,
                "state_history": 1,
                "state": 1,
                "host": 1,
                LEASE_FIELD: 1,
            },
        )
    )
    job_of = _job_of_launches(lp, launch_docs)
    docs_by_id = {d["launch_id"]: d for d in launch_docs}
    # 2. Slurm's view
    queue = queue_view()
    report.slurm_available = queue is not None
    _refresh_job_states(lp, queue)
    candidates: dict[int, LostRun] = {}
    if queue is not None:
        ended = [
            job_of[lid]
            for lid in last_launch.values()
            if lid in job_of and queue.get(job_of[lid]) not in ACTIVE_SLURM_STATES
        ]
        finals = slurm_final_states(ended) if ended else {}
        for fid, fw in before.items():
            lid = last_launch[fid]
            job = job_of.get(lid) if lid is not None else None
            if job is None:
                continue
            state = queue.get(job)
            if state in ACTIVE_SLURM_STATES:
                continue
            final = state or finals.get(job) or "no longer known to squeue"
            candidates[fid] = LostRun(
                fid,
                fw.get("name", ""),
                (fw.get("spec") or {}).get(META_MATERIAL, "?"),
                lid,
                f"Slurm job {job} ended ({final}) while the firework was {fw['state']}",
                job,
            )
    # 3. the leases of ionflow workers (a live lease is never taken over)
    from ionflow.backends.lease import classify_launch

    live_lease: set[int] = set()
    for fid, fw in before.items():
        lid = last_launch[fid]
        doc = docs_by_id.get(lid) if lid is not None else None
        if fw["state"] != "RUNNING" or doc is None or not doc.get(LEASE_FIELD):
            continue
        is_lost, why, _ = classify_launch(doc, default_lease_s=None)
        if not is_lost:
            live_lease.add(fid)
            continue
        job = job_of.get(lid)
        if queue is not None and job is not None and queue.get(job) in ACTIVE_SLURM_STATES:
            if "is gone" not in why:
                continue  # Slurm runs its job: a late ping is not a lost run
        if fid not in candidates:
            candidates[fid] = LostRun(
                fid,
                fw.get("name", ""),
                (fw.get("spec") or {}).get(META_MATERIAL, "?"),
                lid,
                f"lease expired: {why}",
                job,
            )
    # 4. FireWorks' ping view
    if expiration_secs is not None:
        with contextlib.redirect_stdout(io.StringIO()):
            _, lost_ids, inconsistent = lp.detect_lostruns(
                expiration_secs=expiration_secs, query=cq or None, refresh=not dry_run
            )
        report.inconsistent = sorted(inconsistent)
        for fid in lost_ids:
            lid = last_launch.get(fid)
            job = job_of.get(lid) if lid is not None else None
            if queue is not None and job is not None and queue.get(job) in ACTIVE_SLURM_STATES:
                continue  # Slurm runs its job: a late ping is not a lost run
            if fid in live_lease:
                continue  # its ionflow worker renews a live lease
            if fid in before and fid not in candidates:
                candidates[fid] = LostRun(
                    fid,
                    before[fid].get("name", ""),
                    (before[fid].get("spec") or {}).get(META_MATERIAL, "?"),
                    last_launch.get(fid),
                    f"no ping for more than {expiration_secs:g} s",
                )
    # 5. re-read: skip fireworks that moved on since step 1 (completed, or relaunched)
    if candidates:
        now = {
            fw["fw_id"]: fw
            for fw in lp.fireworks.find(
                {"fw_id": {"$in": list(candidates)}}, {"fw_id": 1, "state": 1, "launches": 1}
            )
        }
        for fid in list(candidates):
            fw = now.get(fid)
            same = fw is not None and (fw.get("launches") or [None])[-1] == last_launch[fid]
            if fw is None or fw["state"] != before[fid]["state"] or not same:
                del candidates[fid]
    report.lost = sorted(candidates.values(), key=lambda r: r.fw_id)
    if dry_run:
        return report
    from ionflow.backends.lease import reset_lost_runs

    to_rerun = []
    for run in report.lost:
        if before[run.fw_id]["state"] == "RESERVED" and run.launch_id is not None:
            lp.cancel_reservation(run.launch_id)  # back to READY
            report.unreserved.append(run.fw_id)
        else:
            to_rerun.append(run)
    report.rerun = reset_lost_runs(lp, to_rerun, states=("RUNNING", "RESERVED"))
    return report


# ----------------------------------------------------------------------------- status


def campaign_overview(
    db: ResolvedDatabase,
    campaign: str,
    *,
    queue: dict[str, str] | None = None,
    expiration_secs: float | None = None,
) -> dict[str, Any]:
    """Per-material job counts (queued/waiting/running/completed/fizzled/lost) and queue jobs.

    Parameters
    ----------
    db
        The campaign's database.
    campaign
        Campaign name.
    queue
        A :func:`slurm_queue` snapshot (``None``: take one; Slurm missing -> no lost column
        from Slurm).
    expiration_secs
        Also count runs without a ping for this long as lost (dry run of ``detect_lostruns``).

    Returns
    -------
    dict
        ``materials``: material -> Counter of ``queued`` (READY/RESERVED), ``waiting``,
        ``running``, ``completed``, ``fizzled``, ``defused``, ``lost`` (running but lost);
        ``jobs``: profile -> Counter of Slurm states of ionflow's unfinished jobs;
        ``slurm_available``: bool.
    """
    with open_launchpad(db) as lp:
        return _overview(lp, campaign, queue, expiration_secs)


def _overview(lp, campaign, queue, expiration_secs) -> dict[str, Any]:
    status = _slurm_status(lp, campaign, queue, expiration_secs)
    return {
        "materials": status.counts,
        "jobs": status.queue_jobs,
        "slurm_available": bool(status.queue_available),
        "lost": status.lost,
    }


def _slurm_status(lp, campaign, queue, expiration_secs) -> CampaignStatus:
    """The campaign's jobs and counts, lost runs as :func:`recover` would find them (dry
    run), and the Slurm states of ionflow's unfinished queue jobs per profile."""
    from ionflow.backends.fireworks_local import campaign_jobs

    snapshot = queue if queue is not None else slurm_queue()
    rec = _recover(lp, campaign, expiration_secs, True, lambda: snapshot)
    status = CampaignStatus(campaign, jobs=campaign_jobs(lp, campaign), lost=rec.lost)
    status.fill_counts()
    status.queue_available = snapshot is not None
    if snapshot is not None:
        for r in _jobs(lp).find({"campaign": campaign}, {"job_id": 1, "profile": 1}):
            state = snapshot.get(r["job_id"])
            if state in ACTIVE_SLURM_STATES:
                status.queue_jobs.setdefault(r["profile"], Counter())[state] += 1
    return status


def campaign_done(lp: LaunchPad, campaign: str | None) -> bool:
    """Whether nothing of the campaign can run any more.

    True when no firework is READY, RESERVED or RUNNING and either none is WAITING (all
    COMPLETED/FIZZLED/DEFUSED) or some FIZZLED (the WAITING ones are its descendants and
    wait for a fix and a rerun).
    """
    cq = _campaign_query(campaign)
    active = {**cq, "state": {"$in": ["READY", "RESERVED", "RUNNING"]}}
    if lp.fireworks.find_one(active, {"_id": 1}) is not None:
        return False
    if lp.fireworks.find_one({**cq, "state": "WAITING"}, {"_id": 1}) is None:
        return True
    return lp.fireworks.find_one({**cq, "state": "FIZZLED"}, {"_id": 1}) is not None


# ----------------------------------------------------------------------------- the backend


class FireWorksSlurm(FireWorksLocal):
    """FireWorks LaunchPad on the campaign's database; Slurm jobs of ``rlaunch`` workers run it.

    Parameters
    ----------
    db
        The database. Workers on compute nodes must reach it: not the embedded server.
    data_dir
        Project data directory on a file system the compute nodes share (worker files,
        queue scripts and job output under ``hpc/``).
    lp
        A LaunchPad to use (default: a new one on ``db``, closed by :meth:`close`).

    Verbs (:class:`~ionflow.backends.base.Backend`), besides ``submit`` (as the local
    backend's):

    * ``run(campaign, profiles=[...], max_jobs=1, dry_run=False, recover=False, echo=print,
      warn=None, queue=None)`` — one launch round: a Slurm snapshot, lost runs made READY
      (``recover``, when the queue answers), then up to ``max_jobs`` queue jobs per profile
      (:func:`launch`); ``RunReport.launches`` holds the :class:`LaunchReport` of each
      profile and ``done`` the state counts once nothing of the campaign can run any more;
    * ``status(campaign, expiration_secs=None, queue=None)`` — lost runs as :func:`recover`
      finds them (Slurm, leases, pings) and the Slurm states of ionflow's queue jobs;
    * ``recover(campaign, dry_run=False, expiration_secs=None, queue_view=slurm_queue)`` —
      :func:`recover`.
    """

    name: ClassVar[str] = "fireworks-slurm"

    def run(  # type: ignore[override]
        self,
        campaign: str | None,
        *,
        profiles: Iterable[SlurmProfile],
        max_jobs: int = 1,
        dry_run: bool = False,
        recover: bool = False,
        echo: Callable[..., Any] = print,
        warn: Callable[[str], Any] | None = None,
        queue: dict[str, str] | None = None,
    ) -> RunReport:
        """One launch round (see the class notes)."""
        warn = warn or (lambda message: None)
        if queue is None:
            queue = slurm_queue()
        if queue is None:
            warn("squeue failed or is missing: cannot see the queue (is this a Slurm login node?)")
        lp = self.lp
        if recover and queue is not None and not dry_run:
            snapshot = queue
            rec = _recover(lp, campaign, None, False, lambda: snapshot)
            for run in rec.lost:
                echo(
                    f"lost: fw {run.fw_id} {run.name}: {run.reason} -> READY again",
                    soft_wrap=True,
                )
        report = RunReport()
        for profile in profiles:
            rep = _launch(
                self.db,
                lp,
                profile,
                self.project.data_dir,
                campaign,
                max_jobs,
                dry_run,
                queue,
            )
            report.launches.append(rep)
            if rep.submitted:
                echo(
                    f"{profile.name}: submitted {len(rep.submitted)} job(s) "
                    f"({', '.join(rep.submitted)}); {rep.ready} READY firework(s), "
                    f"{rep.active_jobs} job(s) already queued/running",
                    soft_wrap=True,
                )
            for err in rep.errors:
                warn(err)
        if campaign_done(lp, campaign):
            q = _campaign_query(campaign)
            report.done = dict(Counter(fw["state"] for fw in lp.fireworks.find(q, {"state": 1})))
        return report

    def recover(  # type: ignore[override]
        self,
        campaign: str | None,
        *,
        dry_run: bool = False,
        expiration_secs: float | None = None,
        queue_view: Callable[[], dict[str, str] | None] = slurm_queue,
    ) -> RecoveryReport:
        """Find lost runs (Slurm, leases, pings) and make them READY (see :func:`recover`)."""
        return _recover(self.lp, campaign, expiration_secs, dry_run, queue_view)

    def status(  # type: ignore[override]
        self,
        campaign: str,
        *,
        expiration_secs: float | None = None,
        queue: dict[str, str] | None = None,
    ) -> CampaignStatus:
        """The campaign with Slurm's view: lost runs and ionflow's queue jobs per profile."""
        from ionflow.backends.fireworks_local import _last_submission, failed_jobs

        out = _slurm_status(self.lp, campaign, queue, expiration_secs)
        out.last_submission = _last_submission(self.lp, campaign)
        out.failures = failed_jobs(self.lp, campaign)
        return out
