"""The jobflow-remote backend: submit from a workstation; compute nodes never see the database.

`jobflow-remote <https://github.com/Matgenix/jobflow-remote>`_ keeps the job queue and the
JobStore on the workstation's side. Its *runner* (a process on the workstation) uploads
each job, self-contained, over SSH into a run directory on the cluster, submits it with
the scheduler (qtoolkit → ``sbatch``), polls, downloads the outputs and writes them into
the JobStore. On the cluster a job runs ``jf execution run`` with a file-based JobStore:
no MongoDB address, no credentials, no route to the database needed.

How ionflow uses it
-------------------
*Environment.* jobflow-remote 1.0.1 requires ``pymongo<4.11``; ionflow pins 4.16.0.
Every other pinned package accepts 4.10.1, so the runner lives in its own virtual
environment, ``.venv-remote`` (``make remote-venv``: ``constraints.txt`` with pymongo 4.10.1
plus ``constraints-remote.txt``; ionflow installed into it without dependencies). This
module is imported in both environments: in ionflow's (``.venv``) :class:`JobflowRemote`
is a thin proxy that runs ``<remote python> -m ionflow.backends.jobflow_remote VERB`` with
a JSON request on stdin; in ``.venv-remote`` the ``_agent_*`` functions do the work with
jobflow-remote's API. The remote Python is ``$IONFLOW_REMOTE_PYTHON``, else
``<this venv>-remote/bin/python``.

*Project file.* ``ionflow remote init`` (:func:`write_project`) writes
``~/.jfremote/<project>.yaml`` (mode 600; ``$JFREMOTE_PROJECTS_FOLDER`` moves it) from
ionflow's cluster profiles: one worker per job category (``ionflow-relax``, ``ionflow-md``,
``ionflow-analysis``; resources from the profile's ``my_qadapter.yaml`` keys, ``pre_rocket``
lines as the worker's ``pre_run``), the queue store and the JobStore on the workstation's
database. Each job is routed to its category's worker through
``job.config.manager_config["worker"]``.

*Reuse and idempotency.* :meth:`JobflowRemote.submit` looks every planned job up by its
reuse key (``job.metadata.ionflow_key``) in jobflow-remote's ``jobs`` collection: a material
whose jobs all exist is reused whole, a new one is added as one flow. A material with some
jobs present and some new (the plan changed, e.g. a temperature added) is *extended*: its
new jobs go in as a flow of their own whose references to reused jobs point at the
existing ones (:func:`_extension`). jobflow-remote waits only on parents inside a flow, so
the reused jobs the new ones read must have completed; if not, submit is refused with a
one-line error (submit again later).

*States* (:data:`STATE_MAP`): jobflow-remote's states onto :data:`ionflow.backends.STATES`.

*Lost runs.* A Slurm job that ends without writing the job's response (scancel, walltime,
node failure) makes jobflow-remote mark the job ``FAILED`` with "likely killed"; such a job
is *lost* and :meth:`JobflowRemote.recover` reruns it (READY again). The MD run directory is
``$IONFLOW_RUN_ROOT/<campaign>/<material>/<tag>_<hash>`` on the cluster (the workers export
``IONFLOW_RUN_ROOT``), stable per run, so the rerun resumes from the checkpoint there.

*Files into GridFS through the runner.* On the cluster the MD job cannot reach GridFS: its
trajectory reference keeps the remote ``local_path`` and no ``gridfs_id``. After a job
completes, :meth:`JobflowRemote.run` (:func:`_ingest_job`) streams each such file over SFTP
in 1 MiB windows into its GridFS bucket (sha256 checked against the reference), records the
file id in the stored output, and stores the summary document of a completed summary job in
``summaries`` (the compute side could not).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ionflow.backends.base import BackendBase, CampaignStatus, JobRecord, RecoveryReport, RunReport
from ionflow.errors import EnvironmentFailure, UserInputError
from ionflow.names import META_CAMPAIGN, META_KEY, META_MATERIAL, META_STAGE, META_SUBMITTED

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ionflow.campaign import PlannedMaterial
    from ionflow.store import ResolvedDatabase

__all__ = [
    "CATEGORIES",
    "DEFAULT_PROJECT",
    "REMOTE_PYTHON_ENV",
    "STATE_MAP",
    "JobflowRemote",
    "profile_resources",
    "remote_python",
    "write_project",
]

#: Default jobflow-remote project name.
DEFAULT_PROJECT = "ionflow"
#: Environment variable naming the Python of the runner's environment.
REMOTE_PYTHON_ENV = "IONFLOW_REMOTE_PYTHON"
#: Job categories; one jobflow-remote worker each (``ionflow-<category>``).
CATEGORIES = ("relax", "md", "analysis")
#: jobflow-remote job state → ionflow state (:data:`ionflow.backends.STATES`).
STATE_MAP = {
    "WAITING": "WAITING",
    "READY": "READY",
    "CHECKED_OUT": "RESERVED",
    "UPLOADED": "RESERVED",
    "SUBMITTED": "RESERVED",
    "BATCH_SUBMITTED": "RESERVED",
    "RUNNING": "RUNNING",
    "BATCH_RUNNING": "RUNNING",
    "TERMINATED": "RUNNING",
    "RUN_FINISHED": "RUNNING",
    "DOWNLOADED": "RUNNING",
    "COMPLETED": "COMPLETED",
    "FAILED": "FIZZLED",
    "REMOTE_ERROR": "FIZZLED",
    "PAUSED": "PAUSED",
    "STOPPED": "DEFUSED",
    "USER_STOPPED": "DEFUSED",
}
#: States in which the runner still has something to do for a job.
_ACTIVE = (
    "READY", "CHECKED_OUT", "UPLOADED", "SUBMITTED", "RUNNING", "TERMINATED",
    "RUN_FINISHED", "DOWNLOADED", "BATCH_SUBMITTED", "BATCH_RUNNING",
)  # fmt: skip
#: What jobflow-remote writes when a job's process ended without a response (killed).
_KILLED_MARK = "likely killed"
_SUBMISSION_KEY = "ionflow_submission"
_INGESTED = "ionflow_ingested"
_INGESTING = "ionflow_ingesting"
#: A claim on a job's files (``_INGESTING``) older than this is taken over (its process died).
_CLAIM_TIMEOUT_S = 3600.0
_CHUNK = 1 << 20
#: Queue-adapter keys that are not Slurm resources (FireWorks' or ionflow's own).
_NOT_RESOURCES = {
    "_fw_name", "_fw_q_type", "_fw_template_file", "pre_rocket", "post_rocket",
    "rocket_launch", "ionflow", "logdir",
}  # fmt: skip
#: Profile key → qtoolkit Slurm template key.
_RESOURCE_KEYS = {
    "queue": "partition", "walltime": "time", "nodes": "nodes", "ntasks": "ntasks",
    "ntasks_per_node": "ntasks_per_node", "cpus_per_task": "cpus_per_task", "mem": "mem",
    "mem_per_cpu": "mem_per_cpu", "account": "account", "qos": "qos",
    "constraint": "constraint", "gres": "gres", "gpus": "gpus",
    "gpus_per_node": "gpus_per_node", "job_name": "job_name", "exclusive": "exclusive",
    "nodelist": "nodelist", "exclude_nodes": "exclude_nodes", "hint": "hint",
    "licenses": "licenses", "mail_type": "mail_type", "mail_user": "mail_user",
}  # fmt: skip


# ----------------------------------------------------------------------------- workstation


def remote_python() -> Path:
    """The Python of the jobflow-remote runner's environment.

    ``$IONFLOW_REMOTE_PYTHON``, else ``<prefix of this venv>-remote/bin/python`` (the
    ``.venv-remote`` next to ``.venv`` that ``make remote-venv`` builds).

    Raises
    ------
    EnvironmentFailure
        It does not exist.
    """
    env = os.environ.get(REMOTE_PYTHON_ENV)
    path = Path(env).expanduser() if env else Path(sys.prefix + "-remote") / "bin" / "python"
    if not path.exists():
        raise EnvironmentFailure(
            f"the jobflow-remote runner environment is missing: {path} does not exist "
            f"(run `make remote-venv`, or set {REMOTE_PYTHON_ENV})"
        )
    return path


def _call_agent(verb: str, request: dict, *, timeout: float | None = None, echo=None) -> dict:
    """Run ``verb`` in the runner's environment; its JSON answer (last stdout line).

    Lines the agent prints before its answer that start with ``ionflow: `` are passed to
    ``echo`` as they come.
    """
    import tempfile

    cmd = [str(remote_python()), "-m", "ionflow.backends.jobflow_remote", verb]
    # stderr (the runner's warnings, hours of them for a long `run`) into a file: a pipe
    # read only at the end would fill up and block the agent
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True
        )
        try:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(json.dumps(request))
            proc.stdin.close()
            last = ""
            for line in proc.stdout:
                if line.startswith("ionflow: ") and echo is not None:
                    echo(line[len("ionflow: ") :].rstrip("\n"))
                elif line.strip():
                    last = line
            proc.wait(timeout)
        except KeyboardInterrupt:
            proc.send_signal(2)
            with contextlib.suppress(Exception):
                proc.wait(30)
            raise
        size = err.seek(0, 2)
        err.seek(max(0, size - 65536))  # its tail is enough for the one line
        stderr = err.read().decode("utf-8", "replace")
    try:
        answer = json.loads(last)
    except json.JSONDecodeError:
        tail = (stderr.strip().splitlines() or ["no output"])[-1]
        raise EnvironmentFailure(
            f"jobflow-remote {verb} failed (exit {proc.returncode}): {tail}"
        ) from None
    if "error" in answer:
        if answer.get("kind") == "input":
            raise UserInputError(answer["error"])
        raise EnvironmentFailure(answer["error"])
    return answer


class JobflowRemote(BackendBase):
    """Campaigns through jobflow-remote (see the module docstring).

    Parameters
    ----------
    db
        The workstation's database: the JobStore the runner writes outputs to (the project
        file's ``jobstore`` must name the same database; ``ionflow remote init`` does).
    data_dir
        The project data directory (unused by this backend: run directories are on the
        cluster).
    project
        The jobflow-remote project name (default ``$JFREMOTE_PROJECT``, else ``ionflow``).
    """

    name: ClassVar[str] = "jobflow-remote"

    def __init__(self, db: ResolvedDatabase, data_dir=None, *, project: str | None = None):
        self.db = db
        self.data_dir = data_dir
        self.project = project or os.environ.get("JFREMOTE_PROJECT") or DEFAULT_PROJECT

    def _req(self, **kw: Any) -> dict:
        return {"project": self.project, "database": self.db.database, **kw}

    def submit(self, planned: Sequence[PlannedMaterial], campaign: str) -> dict[str, Any]:
        """Add the materials that are new; reuse (by reuse key) the ones submitted before.

        Raises
        ------
        UserInputError
            A material has some but not all of its jobs submitted (changed plan).
        """
        from monty.json import jsanitize

        submitted = datetime.datetime.now(datetime.UTC).isoformat()
        materials = []
        for p in planned:
            for job, _ in p.flow.iterflow():
                job.metadata[META_CAMPAIGN] = campaign
                job.metadata[META_SUBMITTED] = submitted
            materials.append(
                {
                    "name": p.material.name,
                    "flow": jsanitize(p.flow.as_dict(), strict=True, enum_values=True),
                    "keys": list(p.keys.values()),
                }
            )
        return _call_agent(
            "submit", self._req(campaign=campaign, submitted=submitted, materials=materials)
        )

    def run(
        self,
        campaign: str | None,
        *,
        progress: bool = True,
        echo: Callable[..., Any] = print,
        max_seconds: float | None = None,
        interval: float = 2.0,
        **_: Any,
    ) -> RunReport:
        """Run the jobflow-remote runner (in the foreground) until nothing of the campaign
        can run any more; completed jobs' files go into GridFS as they complete.

        ``max_seconds``: stop after this long (the jobs go on; run again to continue).
        """
        try:
            answer = _call_agent(
                "run",
                self._req(campaign=campaign, max_seconds=max_seconds, interval=interval),
                echo=echo if progress else None,
            )
        except KeyboardInterrupt:
            return RunReport(interrupted=True)
        return RunReport(done=answer.get("done"))

    def status(self, campaign: str, **_: Any) -> CampaignStatus:
        """The campaign's jobs in ionflow states; failures; lost runs; last submission."""
        answer = _call_agent("status", self._req(campaign=campaign))
        st = CampaignStatus(campaign=campaign)
        st.jobs = [JobRecord(**j) for j in answer["jobs"]]
        st.failures = answer["failures"]
        st.lost = [_Lost(**d) for d in answer["lost"]]
        st.last_submission = answer["last_submission"]
        st.not_synced = int(answer.get("not_synced") or 0)
        st.fill_counts()
        return st

    def sync(self, campaign: str | None, *, echo: Callable[..., Any] | None = print) -> dict:
        """Copy the files of completed jobs into GridFS and store their summaries, as
        :meth:`run` does after every round: for jobs run by jobflow-remote's own daemon.
        Returns ``{"synced": n, "pending": m}`` (``pending``: still not copied, e.g. the
        cluster unreachable; run again)."""
        answer = _call_agent("sync", self._req(campaign=campaign), echo=echo)
        return {"synced": int(answer["synced"]), "pending": int(answer["pending"])}

    def recover(
        self,
        campaign: str | None,
        *,
        dry_run: bool = False,
        retry_failed: bool = False,
        **_: Any,
    ) -> RecoveryReport:
        """Rerun the jobs whose Slurm job ended without a result (scancel, walltime, node
        failure) and retry transfer errors; with ``retry_failed`` also failed jobs."""
        answer = _call_agent(
            "recover", self._req(campaign=campaign, dry_run=dry_run, retry_failed=retry_failed)
        )
        rep = RecoveryReport(dry_run=dry_run, slurm_available=True)
        rep.lost = [_Lost(**d) for d in answer["lost"]]
        rep.rerun = answer["rerun"]
        rep.retried = answer["retried"]
        rep.running_checked = answer["running_checked"]
        return rep


class _Lost:
    """A lost run as the reports show it (``fw_id``: the jobflow-remote db id)."""

    id_label = "job"  # what the reports call ``fw_id``

    def __init__(self, fw_id: str, name: str, material: str, reason: str) -> None:
        self.fw_id, self.name, self.material, self.reason = fw_id, name, material, reason

    def describe(self) -> str:
        return f"job {self.fw_id} {self.name}: {self.reason}"


# ----------------------------------------------------------------------------- project file


def profile_resources(qadapter: dict, source: Path) -> dict:
    """qtoolkit Slurm resources from a profile's ``my_qadapter.yaml`` keys (``None`` dropped).

    Raises
    ------
    UserInputError
        A key that is neither a Slurm resource ionflow maps nor a FireWorks/ionflow key.
    """
    out = {}
    for key, value in qadapter.items():
        if key in _NOT_RESOURCES or value is None:
            continue
        if key not in _RESOURCE_KEYS:
            raise UserInputError(
                f"{source}: {key}: not a Slurm resource jobflow-remote can set (known: "
                f"{', '.join(sorted(_RESOURCE_KEYS))})"
            )
        out[_RESOURCE_KEYS[key]] = value
    return out


def _find_profiles(paths: Sequence[Path]) -> dict[str, Path]:
    """Category → profile directory from ``--profile`` paths (a profile, or a folder of them)."""
    found: dict[str, Path] = {}
    for path in paths:
        path = Path(path)
        if not path.is_dir():
            raise UserInputError(f"--profile {path}: not a directory")
        if (path / "my_qadapter.yaml").is_file():
            found[path.name] = path
        else:
            for cat in CATEGORIES:
                if (path / cat / "my_qadapter.yaml").is_file():
                    found.setdefault(cat, path / cat)
    missing = [c for c in CATEGORIES if c not in found]
    if missing:
        raise UserInputError(
            f"--profile: no profile for {', '.join(missing)} (give a folder holding "
            f"{'/, '.join(CATEGORIES)}/ with my_qadapter.yaml each, or each profile folder)"
        )
    return {c: found[c] for c in CATEGORIES}


def _parse_host(host: str) -> tuple[str | None, str, int | None]:
    """``user@host[:port]`` → (user, host, port)."""
    user, _, rest = host.rpartition("@")
    name, sep, port = rest.partition(":")
    if not name or (sep and not port.isdigit()):
        raise UserInputError(f"--host {host!r}: expected user@host or user@host:port")
    return (user or None), name, (int(port) if sep else None)


def write_project(
    db: ResolvedDatabase | Callable[[], ResolvedDatabase],
    *,
    project: str,
    profiles: Sequence[Path],
    host: str,
    work_dir: str,
    python_env: str | None = None,
    run_root: str | None = None,
    key_filename: str | None = None,
    port: int | None = None,
    poll_seconds: float = 30.0,
    folder: Path | None = None,
) -> Path:
    """Write the jobflow-remote project file ``<folder>/<project>.yaml`` (mode 600).

    Parameters
    ----------
    db
        The workstation's database (queue and JobStore; its address and credentials are
        written here only: this file stays on the workstation), or a function returning
        it, called once the other arguments are checked (bad input is reported before the
        database is contacted).
    profiles
        ``--profile`` paths: cluster profile folders (``my_qadapter.yaml``) or a folder of
        them (relax/md/analysis).
    host
        ``user@host[:port]`` of the cluster's login node.
    work_dir
        Run directories of the jobs on the cluster (absolute).
    python_env
        Virtual environment on the cluster with ionflow and jobflow-remote (activated in
        every job; default: none, ``jf`` must be on the job's PATH).
    run_root
        ``IONFLOW_RUN_ROOT`` on the cluster (MD run directories and checkpoints; default
        ``<work_dir>/ionflow-runs``).
    key_filename, port
        SSH key and port (also from ``~/.ssh/config``).
    poll_seconds
        Runner delays (checkout, queue polling, state advance).
    folder
        Where projects live (default ``$JFREMOTE_PROJECTS_FOLDER``, else ``~/.jfremote``).
    """
    import yaml

    user, hostname, host_port = _parse_host(host)
    if not work_dir.startswith("/"):
        raise UserInputError(f"--work-dir {work_dir!r}: must be an absolute path on the cluster")
    if not project.replace("-", "").replace("_", "").isalnum():
        raise UserInputError(f"--project {project!r}: letters, digits, - and _ only")
    run_root = run_root or f"{work_dir.rstrip('/')}/ionflow-runs"
    folder = Path(
        folder or os.environ.get("JFREMOTE_PROJECTS_FOLDER") or Path.home() / ".jfremote"
    ).expanduser()
    workers = {}
    for cat, pdir in _find_profiles(profiles).items():
        qfile = pdir / "my_qadapter.yaml"
        try:
            qad = yaml.safe_load(qfile.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UserInputError(f"{qfile}: {exc}".splitlines()[0]) from None
        if not isinstance(qad, dict):
            raise UserInputError(f"{qfile}: expected a mapping of queue keys")
        pre = [ln for ln in str(qad.get("pre_rocket") or "").splitlines() if ln.strip()]
        if python_env:
            pre.append(f"source {python_env.rstrip('/')}/bin/activate")
        pre.append(f"export IONFLOW_RUN_ROOT={run_root}")
        worker = {
            "type": "remote",
            "scheduler_type": "slurm",
            "host": hostname,
            "work_dir": f"{work_dir.rstrip('/')}/{cat}",
            "resources": profile_resources(qad, qfile),
            "pre_run": "\n".join(pre) + "\n",
            "timeout_execute": 120,
            "connect_timeout": 20,
        }
        if user:
            worker["user"] = user
        if port or host_port:
            worker["port"] = port or host_port
        if key_filename:
            worker["key_filename"] = str(Path(key_filename).expanduser().resolve())
        workers[f"ionflow-{cat}"] = worker
    if callable(db):
        db = db()

    def store(collection: str, kind: str = "MongoStore") -> dict:
        d = {"type": kind, "database": db.database, "collection_name": collection}
        d["uri"] = db.uri
        # a database that is down: one line after 15 s, not pymongo's 30 s per call
        d["mongoclient_kwargs"] = {"serverSelectionTimeoutMS": 15000, **db.mongoclient_kwargs}
        return d

    from ionflow.names import BLOBS_COLLECTION, OUTPUTS_COLLECTION

    doc = {
        "name": project,
        "workers": workers,
        "queue": {
            "store": store("jfr_jobs"),
            "flows_collection": "jfr_flows",
            "auxiliary_collection": "jfr_auxiliary",
            "batches_collection": "jfr_batches",
        },
        "jobstore": {
            "docs_store": store(OUTPUTS_COLLECTION),
            "additional_stores": {"data": store(BLOBS_COLLECTION, "GridFSStore")},
        },
        "runner": {
            "delay_checkout": poll_seconds,
            "delay_check_run_status": poll_seconds,
            "delay_advance_status": poll_seconds,
        },
        "metadata": {"written_by": "ionflow remote init"},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{project}.yaml"
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("# jobflow-remote project written by `ionflow remote init`; holds the\n")
        fh.write("# database address: keep it on the workstation (mode 600).\n")
        yaml.safe_dump(doc, fh, sort_keys=False)
    os.chmod(tmp, stat.S_IRUSR | stat.S_IWUSR)
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------- agent side
# Everything below runs in the runner's environment (.venv-remote, jobflow-remote imported).


def _controller(project: str):
    from jobflow_remote import ConfigManager

    try:
        proj = ConfigManager().get_project(project)
    except Exception as exc:  # noqa: BLE001 (jobflow-remote's ConfigError and others)
        raise UserInputError(
            f"jobflow-remote project {project!r}: {str(exc).splitlines()[0]} (write it with "
            "`ionflow remote init`)"
        ) from None
    jc = proj.get_job_controller()
    try:
        jc.jobs.database.client.admin.command("ping")
    except Exception as exc:  # noqa: BLE001
        raise EnvironmentFailure(
            f"jobflow-remote project {project!r}: the queue database is unreachable: "
            f"{str(exc).splitlines()[0][:200]}"
        ) from None
    if jc.auxiliary.find_one({"next_id": {"$exists": True}}) is None:
        jc.reset(reset_output=False, max_limit=1)  # first use: initialise (refused if flows exist)
    jc.jobs.create_index(f"job.metadata.{META_KEY}")
    jc.jobs.create_index(f"job.metadata.{META_CAMPAIGN}")
    return proj, jc


def _agent_submit(req: dict) -> dict:
    from jobflow import Flow

    _, jc = _controller(req["project"])
    added, extended, reused, details, n_added, n_reused = [], [], [], {}, 0, 0
    for m in req["materials"]:
        keys = m["keys"]
        have = {}  # key -> (uuid, state) of the newest job with that key
        for d in jc.jobs.find(
            {f"job.metadata.{META_KEY}": {"$in": keys}},
            {f"job.metadata.{META_KEY}": 1, "uuid": 1, "state": 1, "db_id": 1},
        ).sort("db_id", 1):
            have[d["job"]["metadata"][META_KEY]] = (d["uuid"], d["state"])
        if have and len(have) == len(set(keys)):
            reused.append(m["name"])
            n_reused += len(keys)
            details[m["name"]] = {
                "mode": "unchanged", "added": [], "reused": [], "n_reused": len(keys),
            }  # fmt: skip
            continue
        flow = Flow.from_dict(m["flow"])
        if have:
            flow, names, reused_names = _extension(flow, have, m["name"])
            extended.append(m["name"])
            n_reused += len(have)
            details[m["name"]] = {
                "mode": "extended", "added": names, "reused": reused_names,
                "n_reused": len(have),
            }  # fmt: skip
        else:
            names = [job.name for job, _ in flow.iterflow()]
            added.append(m["name"])
            details[m["name"]] = {"mode": "new", "added": names, "reused": [], "n_reused": 0}
        for job, _ in flow.iterflow():
            cat = job.config.manager_config.get("_category", "analysis")
            job.config.manager_config["worker"] = f"ionflow-{cat}"
        jc.add_flow(flow, worker="ionflow-analysis", allow_external_references=bool(have))
        n_added += len(names)
    record = {
        _SUBMISSION_KEY: True,
        "campaign": req["campaign"],
        "submitted": req["submitted"],
        "jobs_added": n_added,
        "jobs_reused": n_reused,
        "materials": details,
    }
    jc.auxiliary.insert_one(record)
    return {
        "added": added,
        "extended": extended,
        "reused": reused,
        "jobs_added": n_added,
        "jobs_reused": n_reused,
        "details": details,
        "dropped": [],
    }


def _extension(flow, have: dict, material: str):
    """The new jobs of ``flow`` as a flow of their own, their references to reused jobs
    pointing at the existing jobs; (flow, added names, reused names).

    A top-level stage is reused when all its jobs' keys exist. The jobs referenced from the
    new ones must be COMPLETED: their outputs are read when a new job is uploaded, and
    jobflow-remote waits only on parents inside a flow.

    Raises
    ------
    UserInputError
        A reused job the new ones need has not completed yet.
    """
    from jobflow import Flow

    from ionflow.backends.fw_submit import _flat_jobs, _remap_references

    mapping, states, new_items, reused_names = {}, {}, [], []
    for item in flow.jobs:
        jobs = _flat_jobs(item)
        hits = [have.get(j.metadata.get(META_KEY)) for j in jobs]
        if all(hits):
            for j, (uuid, state) in zip(jobs, hits, strict=True):
                mapping[j.uuid] = uuid
                states[uuid] = (j.name, state)
            reused_names.append(item.name)
        else:
            new_items.append(item)
    new_jobs = [j for item in new_items for j in _flat_jobs(item)]
    new_uuids = {j.uuid for j in new_jobs}
    pending = set()
    for job in new_jobs:
        job.function_args = _remap_references(tuple(job.function_args), mapping)
        job.function_kwargs = _remap_references(dict(job.function_kwargs), mapping)
        for u in job.input_uuids:
            if u not in new_uuids and states.get(u, ("?", "?"))[1] != "COMPLETED":
                pending.add(states.get(u, (u, "missing"))[0])
    if pending:
        raise UserInputError(
            f"material {material!r}: the new jobs need {', '.join(sorted(pending))}, which "
            "have not completed yet; submit again once they have (ionflow remote status)"
        )
    for item in new_items:  # out of the planned flow (jobflow: one host flow per job)
        for obj in [item, *_flat_jobs(item)]:
            obj.hosts = [h for h in obj.hosts if h != flow.uuid]
    return Flow(new_items, name=flow.name), [j.name for j in new_jobs], reused_names


def _campaign_query(campaign: str | None) -> dict:
    return {f"job.metadata.{META_CAMPAIGN}": campaign} if campaign else {}


def _error_line(doc: dict) -> str:
    text = str(doc.get("error") or (doc.get("remote") or {}).get("error") or "")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else doc.get("state", "")


def _is_lost(doc: dict) -> bool:
    return doc.get("state") == "FAILED" and _KILLED_MARK in str(doc.get("error") or "")


def _lost_entry(doc: dict) -> dict:
    meta = doc["job"].get("metadata", {})
    return {
        "fw_id": str(doc["db_id"]),
        "name": doc["job"]["name"],
        "material": meta.get(META_MATERIAL, "?"),
        "reason": "its Slurm job ended without a result (scancel, walltime or node failure)",
    }


_PROJ = {"db_id": 1, "state": 1, "job.name": 1, "job.metadata": 1, "error": 1,
         "remote.error": 1, "run_dir": 1, "uuid": 1, "index": 1, "worker": 1,
         _INGESTED: 1}  # fmt: skip


def _agent_status(req: dict) -> dict:
    _, jc = _controller(req["project"])
    jobs, failures, lost = [], [], []
    for d in jc.jobs.find(_campaign_query(req["campaign"]), _PROJ).sort("db_id", 1):
        meta = d["job"].get("metadata", {})
        state = STATE_MAP.get(d["state"], d["state"])
        jobs.append(
            {
                "id": str(d["db_id"]),
                "name": d["job"]["name"],
                "state": state,
                "material": meta.get(META_MATERIAL, "?"),
                "submitted": meta.get(META_SUBMITTED),
                "key": meta.get(META_KEY),
            }
        )
        if _is_lost(d):
            lost.append(_lost_entry(d))
        elif state == "FIZZLED":
            failures.append(
                {
                    "fw_id": str(d["db_id"]),
                    "name": d["job"]["name"],
                    "material": meta.get(META_MATERIAL, "?"),
                    "line": _error_line(d),
                    "environment": d["state"] == "REMOTE_ERROR",
                    "launch_dir": d.get("run_dir"),
                }
            )
    last = jc.auxiliary.find_one(
        {_SUBMISSION_KEY: True, "campaign": req["campaign"]}, {"_id": 0}, sort=[("submitted", -1)]
    )
    return {
        "jobs": jobs,
        "failures": failures,
        "lost": lost,
        "last_submission": last,
        "not_synced": jc.jobs.count_documents(_not_ingested(req["campaign"])),
    }


def _agent_recover(req: dict) -> dict:
    _, jc = _controller(req["project"])
    lost, rerun, retried, checked = [], [], [], 0
    for d in jc.jobs.find(
        {
            **_campaign_query(req["campaign"]),
            "state": {"$in": ["FAILED", "REMOTE_ERROR", *_ACTIVE]},
        },
        _PROJ,
    ):
        if d["state"] in _ACTIVE:
            checked += 1
            continue
        db_id = str(d["db_id"])
        if _is_lost(d):
            lost.append(_lost_entry(d))
            if not req["dry_run"]:
                jc.rerun_job(db_id=db_id, force=True, break_lock=True, delete_files=False)
            rerun.append(db_id)
        elif d["state"] == "REMOTE_ERROR":
            if not req["dry_run"]:
                jc.retry_job(db_id=db_id, break_lock=True)
            retried.append(db_id)
        elif req["retry_failed"]:
            if not req["dry_run"]:
                jc.rerun_job(db_id=db_id, force=True, break_lock=True, delete_files=False)
            retried.append(db_id)
    return {"lost": lost, "rerun": rerun, "retried": retried, "running_checked": checked}


def _say(line: str) -> None:
    print(f"ionflow: {line}", flush=True)


def _agent_run(req: dict) -> dict:
    from jobflow_remote.jobs.runner import Runner

    proj, jc = _controller(req["project"])
    runner = Runner(project_name=req["project"], log_level=None)
    for name, worker in proj.workers.items():  # SSH first: one line, not endless retries
        where = f"{worker.user + '@' if worker.user else ''}{worker.host}" + (
            f":{worker.port}" if worker.port else ""
        )
        try:
            runner.get_host(name).connect()
        except Exception as exc:  # noqa: BLE001 (socket, paramiko and fabric errors)
            line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise EnvironmentFailure(
                f"worker {name}: cannot reach {where} over SSH: {type(exc).__name__}: {line}"
            ) from None
    campaign = req["campaign"]
    advance = ["CHECKED_OUT", "UPLOADED", "RUN_FINISHED", "DOWNLOADED"]
    t0 = time.monotonic()
    interval = float(req.get("interval") or 2.0)
    seen: dict[str, str] = {}
    try:
        while True:
            runner.checkout()
            runner.advance_state(advance)
            runner.check_run_status()
            runner.advance_state(advance)
            _ingest_completed(proj, jc, runner, campaign, req["database"])
            query = _campaign_query(campaign)
            for d in jc.jobs.find(query, {"db_id": 1, "state": 1, "job.name": 1}):
                if seen.get(d["db_id"]) != d["state"]:
                    seen[d["db_id"]] = d["state"]
                    _say(f"{d['job']['name']}: {STATE_MAP.get(d['state'], d['state'])}")
            if jc.jobs.count_documents({**query, "state": {"$in": list(_ACTIVE)}}) == 0:
                break
            if req.get("max_seconds") and time.monotonic() - t0 > req["max_seconds"]:
                return {"done": None}
            time.sleep(interval)
    finally:
        with contextlib.suppress(Exception):
            runner.cleanup()
    counts: dict[str, int] = {}
    for d in jc.jobs.find(_campaign_query(campaign), {"state": 1}):
        s = STATE_MAP.get(d["state"], d["state"])
        counts[s] = counts.get(s, 0) + 1
    return {"done": counts}


def _not_ingested(campaign: str | None) -> dict:
    return {**_campaign_query(campaign), "state": "COMPLETED", _INGESTED: {"$ne": True}}


def _ingest_completed(proj, jc, runner, campaign, database: str) -> int:
    """Files of completed jobs into GridFS; summaries into ``summaries`` (once per job).

    Each job is claimed first (``ionflow_ingesting``, atomically; a claim older than
    :data:`_CLAIM_TIMEOUT_S` is taken over), so that a ``remote run`` and a ``remote sync``
    at the same time never stream the same file twice. Returns how many jobs were done.
    """
    done = 0
    for d in jc.jobs.find(_not_ingested(campaign), _PROJ):
        now = time.time()
        claimed = jc.jobs.find_one_and_update(
            {
                "_id": d["_id"],
                _INGESTED: {"$ne": True},
                "$or": [
                    {_INGESTING: {"$exists": False}},
                    {_INGESTING: {"$lt": now - _CLAIM_TIMEOUT_S}},
                ],
            },
            {"$set": {_INGESTING: now}},
        )
        if claimed is None:
            continue  # another process has it
        try:
            _ingest_job(proj, runner, d, database)
        except BaseException as exc:  # noqa: BLE001 (tried again at the next round)
            jc.jobs.update_one({"_id": d["_id"]}, {"$unset": {_INGESTING: ""}})
            if not isinstance(exc, Exception):
                raise  # Ctrl-C: the claim released, the next run takes the job
            line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            _say(f"{d['job']['name']}: its files could not be stored yet ({line}); retrying")
            continue
        jc.jobs.update_one(
            {"_id": d["_id"]}, {"$set": {_INGESTED: True}, "$unset": {_INGESTING: ""}}
        )
        done += 1
    return done


def _agent_sync(req: dict) -> dict:
    """What :func:`_agent_run` does after each round, once, without running the runner:
    for campaigns run by jobflow-remote's own daemon (``jf runner start``)."""
    from jobflow_remote.jobs.runner import Runner

    proj, jc = _controller(req["project"])
    runner = Runner(project_name=req["project"], log_level=None)
    try:
        done = _ingest_completed(proj, jc, runner, req["campaign"], req["database"])
    finally:
        with contextlib.suppress(Exception):
            runner.cleanup()
    return {"synced": done, "pending": jc.jobs.count_documents(_not_ingested(req["campaign"]))}


def _file_refs(obj, path=()):
    """(path, ref) of every stored-file reference without a GridFS copy in an output."""
    if isinstance(obj, dict):
        if {"sha256", "size_bytes", "filename", "local_path"} <= obj.keys():
            if obj.get("gridfs_id") is None and obj.get("local_path"):
                yield path, obj
            return
        for k, v in obj.items():
            yield from _file_refs(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _file_refs(v, (*path, i))


def _ingest_job(proj, runner, jdoc: dict, database: str) -> None:
    from ionflow.names import OUTPUTS_COLLECTION, SUMMARY_COLLECTION, TRAJECTORY_BUCKET

    store = proj.get_jobstore()
    store.connect()
    db = store.docs_store._collection.database.client[database]
    outputs = db[OUTPUTS_COLLECTION]
    out = outputs.find_one({"uuid": jdoc["uuid"], "index": jdoc["index"]})
    if out is None:
        return
    sets = {}
    refs = list(_file_refs(out.get("output"), ("output",)))
    if refs:
        host = runner.get_host(jdoc["worker"])
        host.connect()
        sftp = host.connection.sftp()  # fabric's shared client: the runner uses it too
        for path, ref in refs:
            bucket = ref.get("bucket") or TRAJECTORY_BUCKET
            meta = {
                "job_uuid": jdoc["uuid"],
                "campaign": jdoc["job"]["metadata"].get(META_CAMPAIGN),
                "material": jdoc["job"]["metadata"].get(META_MATERIAL),
                "remote_path": ref["local_path"],
            }
            fid = _stream_to_gridfs(sftp, ref, db, bucket, meta)
            dotted = ".".join(str(p) for p in path)
            sets[f"{dotted}.gridfs_id"] = str(fid)
            sets[f"{dotted}.database"] = database
            _say(
                f"{jdoc['job']['name']}: {ref['filename']} ({ref['size_bytes']} B) into "
                f"GridFS bucket {bucket}"
            )
    if sets:
        outputs.update_one({"_id": out["_id"]}, {"$set": sets})
    if jdoc["job"]["metadata"].get(META_STAGE) == "summary" and isinstance(out.get("output"), dict):
        from ionflow.results import store_summary

        store_summary(db[SUMMARY_COLLECTION], out["output"])
    store.close()


def _stream_to_gridfs(sftp, ref: dict, db, bucket_name: str, metadata: dict):
    """Copy the remote file ``ref['local_path']`` into the GridFS bucket ``bucket_name``,
    1 MiB at a time; check size and sha256; then delete older files of the same job.

    The chunk and file documents are written here, by the GridFS spec (255 KiB chunks,
    ``files_id``/``n``; the files document last), rather than through pymongo's
    ``GridIn``, which buffers up to 32 MiB of chunks before it inserts them: memory stays
    at about one window whatever the file's size.
    """
    import hashlib

    import gridfs
    from bson import Binary, ObjectId

    from ionflow.trajectories import _delete_older

    chunk_size = 255 * 1024
    window = 4 * chunk_size  # ~1 MiB per round trip
    bucket = gridfs.GridFSBucket(db, bucket_name=bucket_name)
    chunks, files = db[f"{bucket_name}.chunks"], db[f"{bucket_name}.files"]
    chunks.create_index([("files_id", 1), ("n", 1)], unique=True)
    files.create_index([("filename", 1), ("uploadDate", 1)])
    fid = ObjectId()
    sha = hashlib.sha256()
    size = n = 0
    total = sftp.stat(ref["local_path"]).st_size
    try:
        with sftp.open(ref["local_path"], "rb") as src:
            # one window at a time, its 32 KiB SFTP requests pipelined (readv); paramiko's
            # prefetch() would buffer the whole file in memory
            for offset in range(0, total, window):
                data = b"".join(src.readv([(offset, min(window, total - offset))]))
                sha.update(data)
                size += len(data)
                docs = []
                for k in range(0, len(data), chunk_size):
                    docs.append({"files_id": fid, "n": n, "data": Binary(data[k : k + chunk_size])})
                    n += 1
                chunks.insert_many(docs, ordered=True)
        if sha.hexdigest() != ref["sha256"] or size != ref["size_bytes"]:
            raise EnvironmentFailure(
                f"{ref['local_path']}: checksum/size mismatch after the transfer (got {size} B)"
            )
        files.insert_one(
            {
                "_id": fid,
                "length": size,
                "chunkSize": chunk_size,
                "uploadDate": datetime.datetime.now(datetime.UTC),
                "filename": ref["filename"],
                "metadata": {**metadata, "sha256": ref["sha256"]},
            }
        )
    except BaseException:
        with contextlib.suppress(Exception):
            chunks.delete_many({"files_id": fid})
        raise
    _delete_older(db, bucket, fid, {"job_uuid": metadata["job_uuid"]}, bucket_name)
    return fid


_VERBS = {
    "submit": _agent_submit,
    "status": _agent_status,
    "recover": _agent_recover,
    "run": _agent_run,
    "sync": _agent_sync,
}


def _agent_main(verb: str) -> int:
    """Entry point in the runner's environment: JSON request on stdin, JSON answer last."""
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    req = json.loads(sys.stdin.read() or "{}")
    try:
        answer = _VERBS[verb](req)
    except UserInputError as exc:
        answer = {"error": str(exc), "kind": "input"}
    except EnvironmentFailure as exc:
        answer = {"error": str(exc), "kind": "environment"}
    except KeyboardInterrupt:
        answer = {"error": "interrupted", "kind": "environment"}
    except Exception as exc:  # noqa: BLE001 (one line for the user; traceback on stderr)
        import traceback

        traceback.print_exc()
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        answer = {
            "error": f"jobflow-remote {verb}: {type(exc).__name__}: {line}",
            "kind": "environment",
        }
    print(json.dumps(answer, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_agent_main(sys.argv[1]))
