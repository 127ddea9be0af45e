"""Typed outputs of the campaign's jobs (atomate2's ``output_schema`` idea).

Each job builds its output as one of these models and stores ``model.to_output()`` — the
same plain document shape as before these models existed, so existing databases read
back unchanged — and each consumer parses what it receives with ``Model.model_validate``
instead of reading keys by name across modules. Engine-specific extras (VASP segments,
INCAR overrides) ride along as extra fields of :class:`MDOutput`.

Pure pydantic: no jobflow, FireWorks or database imports.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ionflow.trajectories import TrajectoryRef


class _Output(BaseModel):
    def to_output(self) -> dict[str, Any]:
        """The stored document: JSON-like, except objects jobflow serialises itself
        (a pymatgen ``Structure``)."""
        return self.model_dump(mode="python", exclude_none=False)


class SupercellOutput(_Output):
    """The supercell every MD run of a material starts from, and what the control pins."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    structure: Any = Field(None, description="pymatgen Structure of the supercell")
    matrix: list[list[int]] = Field(description="Supercell matrix (rows: multiples of a, b, c)")
    n_atoms: int = Field(description="Atoms in the supercell")
    pinned_indices: list[int] = Field(
        default_factory=list, description="Supercell atoms the pinned control fixes"
    )
    pinned_reason: str = Field("", description="Why these atoms (or none) are pinned")
    anions: dict[str, Any] = Field(
        default_factory=dict,
        description="Anion classification (ionflow.structure.AnionClassification dump)",
    )
    anion_summary: str = Field("", description="One line: bonded/isolated anions, groups")
    anion_descriptors: dict[str, Any] | None = Field(
        None,
        description="Isolated-anion descriptors of the input cell "
        "(ionflow.analysis.anions.AnionReport dump: site symmetry, spacing, Ewald energies)",
    )
    notes: list[str] = Field(default_factory=list, description="Caveats worth reading")

    @property
    def bonded_indices(self) -> list[int]:
        return list(self.anions.get("bonded_indices", []))

    @property
    def isolated_indices(self) -> list[int]:
        return list(self.anions.get("isolated_indices", []))


class PotentialInfo(BaseModel):
    """Which potential produced an MD run: the provenance of its D
    (:func:`ionflow.potentials.potential_provenance`)."""

    model_config = ConfigDict(extra="allow")

    engine: str = Field(description="ionflow engine name (chgnet, sevennet, mace, …, toy)")
    potential: str = Field(description="The potential as papers name it (e.g. SevenNet)")
    package: str | None = Field(None, description="The pip package that ran it (None: built in)")
    package_version: str | None = Field(None, description="Its installed version")
    model: str | None = Field(
        None, description="Model variant name (e.g. 7net-0) or model file path (engine.model)"
    )
    model_file: str | None = Field(
        None,
        description="The weights file loaded (a given path, or the one a packaged variant loads)",
    )
    model_sha256: str | None = Field(
        None, description="SHA-256 (hex) of the weights file (None: not known, e.g. a download)"
    )
    device: str | None = Field(None, description="cpu | cuda (None: the engine takes none)")


class MDOutput(_Output):
    """One MD run, whichever engine ran it: where its production trajectory is and how it
    was made. ``md`` holds the engine's run statistics (``mean_temperature_k`` always)."""

    model_config = ConfigDict(extra="allow")

    campaign: str = Field(description="Campaign")
    material: str = Field(description="Material name")
    variant: str = Field(description="free | pinned")
    temperature_k: float = Field(description="Target temperature, K")
    engine: str = Field(description="MD engine (a potential name or vasp)")
    potential: PotentialInfo | None = Field(
        None, description="Which potential, package version and model file ran (provenance)"
    )
    workdir: str = Field(description="Working directory of the run")
    trajectory: TrajectoryRef = Field(description="The stored production trajectory")
    fixed_indices: list[int] = Field(default_factory=list, description="Atoms held fixed")
    md: dict[str, Any] = Field(default_factory=dict, description="Engine run statistics")
    numerics: dict[str, Any] | None = Field(
        None,
        description="The numerical environment of the call that finished the run (ML MD): "
        "CPU, BLAS library/kernel architecture/threads, the variables steering them, numpy/"
        "torch versions and threads (ionflow.potentials.numerical_environment). Two runs of "
        "the same job give the same bits only where these agree.",
    )

    @property
    def frame_interval_fs(self) -> float:
        return self.trajectory.frame_interval_fs

    @property
    def velocities_stored(self) -> bool:
        return self.trajectory.has_velocities

    @property
    def label(self) -> str:
        """``Material/variant_TK``."""
        return f"{self.material}/{self.variant}_{self.temperature_k:g}K"

    def to_output(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class AnalysisOutput(_Output):
    """The analyses of one MD run: diffusion (always) and the other kinds by name."""

    material: str = Field(description="Material name")
    variant: str = Field(description="free | pinned")
    temperature_k: float = Field(description="Target temperature, K")
    analysis_uuid: str | None = Field(None, description="jobflow uuid of the analysis job")
    trajectory_sha256: str | None = Field(
        None, description="Checksum of the analysed trajectory (which MD run this is)"
    )
    potential: PotentialInfo | None = Field(
        None, description="The MD output's potential provenance (which potential made this D)"
    )
    analysis: dict[str, Any] = Field(description="DiffusionAnalysis document")
    results: dict[str, dict[str, Any]] | None = Field(
        None,
        description="Other analyses: kind → {schema_version, result} (ionflow.analysis.ANALYSES)"
        " or {schema_version, error} when the kind failed on this run",
    )
    density_file: dict[str, Any] | None = Field(
        None,
        description="The density CHGCAR in GridFS (ionflow.trajectories.StoredFileRef dump; "
        "ionflow export-density writes it)",
    )
    production_ps: float | None = Field(
        None, description="Production actually run (all chunks of an extended run), ps"
    )
    md_compute: dict[str, Any] | None = Field(
        None,
        description="Compute of the MD run directory (MDOutput.compute: wall_s, core_hours, "
        "gpu_hours, atom_steps, calls)",
    )

    def to_output(self) -> dict[str, Any]:
        out = self.model_dump(mode="json")
        for key in ("results", "density_file", "production_ps", "md_compute"):
            if out[key] is None:
                del out[key]
        return out

    def parsed_results(self) -> dict[str, Any]:
        """The other analyses parsed with their registered result models (see
        :func:`parse_results`)."""
        return parse_results(self.results)

    def result_errors(self) -> dict[str, str]:
        """kind → why that analysis has no result on this run."""
        return {
            k: str(v.get("error"))
            for k, v in (self.results or {}).items()
            if isinstance(v, dict) and v.get("error")
        }

    def diffusion(self):
        """The parsed :class:`~ionflow.analysis.DiffusionAnalysis`."""
        from ionflow.analysis import DiffusionAnalysis

        return DiffusionAnalysis.model_validate(self.analysis)


def parse_results(results: dict[str, Any] | None) -> dict[str, Any]:
    """``results[kind]`` entries of an analysis output, each parsed with the result model
    its kind registers (:data:`ionflow.analysis.ANALYSES`); unknown kinds, other schema
    versions, failed and unreadable entries are skipped."""
    from pydantic import ValidationError

    from ionflow.analysis import ANALYSES

    parsed: dict[str, Any] = {}
    for kind, entry in (results or {}).items():
        cls = ANALYSES.get(kind)
        if cls is None or not isinstance(entry, dict) or entry.get("result") is None:
            continue
        if str(entry.get("schema_version")) != str(cls.schema_version):
            continue
        try:
            parsed[kind] = cls.result_model.model_validate(entry.get("result"))
        except ValidationError:
            continue
    return parsed
