"""Potentials that evaluate many structures (MD replicas) in one call.

:func:`get_batched_potential` returns a :class:`BatchedPotential` for an engine name of
:mod:`ionflow.potentials`. Its :meth:`~BatchedPotential.compute` takes the current
structures of all replicas and returns, for each, the results dictionary the engine's
ordinary ASE calculator would have produced (same keys, same units), so that a replica of
:func:`ionflow.batched.run_batched_md` writes the same frames as a lone
:func:`ionflow.md.run_md`.

``"chgnet"``
    One ``CHGNet.predict_graph`` call on the list of crystal graphs (one batched forward
    and backward pass), task ``"efsm"`` as ``CHGNetCalculator`` does. Graphs are built per
    structure (CHGNet's converter has no batched form; ~7 ms for 52 atoms).
``"sevennet"``
    One SevenNet model call on a ``torch_geometric`` batch of the replicas' graphs (needs
    the ``sevenn`` package).
``"toy"`` and any other engine
    One ASE calculator per replica, called in turn: correct, but no faster than
    sequential runs (the toy Morse potential costs microseconds; for mace/m3gnet no batched
    path is implemented yet).

Devices: ``device="auto"`` is ``"cuda"`` when ``torch.cuda.is_available()`` and
``"cpu"`` otherwise; ``"cpu"`` and ``"cuda"`` are taken as given (the toy potential runs
on the CPU whatever is asked).
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Literal

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from ionflow.errors import UserInputError

__all__ = ["BatchedPotential", "get_batched_potential", "resolve_device"]

Device = Literal["auto", "cpu", "cuda"]


def resolve_device(device: str) -> str:
    """``"cpu"`` or ``"cuda"`` for ``device`` (``"auto"``: CUDA when available).

    Raises
    ------
    UserInputError
        Unknown device, or ``"cuda"`` asked for where torch sees no GPU.
    """
    key = str(device).strip().lower()
    if key not in ("auto", "cpu", "cuda"):
        raise UserInputError(f"unknown device {device!r}: expected auto, cpu or cuda")
    if key == "cpu":
        return "cpu"
    try:
        import torch

        has_cuda = bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover - torch is a dependency
        has_cuda = False
    if key == "cuda" and not has_cuda:
        raise UserInputError("device 'cuda' asked for, but torch sees no CUDA GPU here")
    return "cuda" if has_cuda else "cpu"


class BatchedPotential:
    """Evaluates the structures of several replicas together.

    Attributes
    ----------
    engine
        Engine name (``"chgnet"``, ``"toy"``, ...).
    device
        ``"cpu"`` or ``"cuda"``.
    reference
        The engine's ordinary ASE calculator: replicas take its name, parameters and
        implemented properties so that their frames and checkpoints are those of a lone run.
    """

    batched: bool = False  #: True when compute() makes one model call for all structures

    def __init__(self, engine: str, device: str, reference: Calculator) -> None:
        self.engine = engine
        self.device = device
        self.reference = reference

    @property
    def calculator_name(self) -> str:
        """``module.qualname`` of the lone calculator (what :mod:`ionflow.md` records)."""
        cls = type(self.reference)
        return f"{cls.__module__}.{cls.__qualname__}"

    def compute(self, structures: list[Atoms]) -> list[dict[str, Any]]:
        """Results (energy, forces, ...) of each structure, in the order given."""
        raise NotImplementedError


class _LoopPotential(BatchedPotential):
    """One ASE calculator per structure slot, called one after another."""

    def __init__(self, engine: str, device: str, factory: Any) -> None:
        super().__init__(engine, device, factory())
        self._factory = factory
        self._calculators: list[Calculator] = [self.reference]

    def compute(self, structures: list[Atoms]) -> list[dict[str, Any]]:
        while len(self._calculators) < len(structures):
            self._calculators.append(self._factory())
        out = []
        for calc, atoms in zip(self._calculators, structures, strict=False):
            calc.calculate(atoms, list(calc.implemented_properties), all_changes)
            out.append(dict(calc.results))
        return out


class _CHGNetPotential(BatchedPotential):
    """CHGNet: per-structure graphs, one batched ``predict_graph``."""

    batched = True

    def __init__(self, device: str, **kwargs: Any) -> None:
        from ionflow.potentials import get_calculator

        super().__init__("chgnet", device, get_calculator("chgnet", use_device=device, **kwargs))
        self.model = self.reference.model

    def compute(self, structures: list[Atoms]) -> list[dict[str, Any]]:
        from pymatgen.io.ase import AseAtomsAdaptor

        ref = self.reference
        pmg = [AseAtomsAdaptor.get_structure(atoms) for atoms in structures]
        graphs = [self.model.graph_converter(s) for s in pmg]
        preds = self.model.predict_graph(
            graphs,
            task="efsm",
            return_crystal_feas=True,
            return_site_energies=ref.return_site_energies,
            batch_size=len(graphs),
        )
        if isinstance(preds, dict):
            preds = [preds]
        out = []
        for structure, pred in zip(pmg, preds, strict=True):
            # the conversion of CHGNetCalculator.calculate
            factor = len(structure) if self.model.is_intensive else 1
            res = {
                "energy": pred["e"] * factor,
                "forces": pred["f"],
                "magmoms": pred["m"],
                "stress": pred["s"] * ref.stress_weight,
            }
            res["free_energy"] = res["energy"]
            res["crystal_fea"] = pred["crystal_fea"]
            if ref.return_site_energies:
                res["energies"] = pred["site_energies"]
            out.append(res)
        return out


class _SevenNetPotential(BatchedPotential):
    """SevenNet: a ``torch_geometric`` batch of the replicas' graphs, one model call.

    The graphs are those ``SevenNetCalculator.calculate`` builds; the model is a copy of the
    calculator's, switched to batched input (``set_is_batch_data(True)``), so the lone
    calculator stays usable.
    """

    batched = True

    def __init__(self, device: str, **kwargs: Any) -> None:
        import copy

        from ionflow.potentials import get_calculator

        super().__init__("sevennet", device, get_calculator("sevennet", device=device, **kwargs))
        self.model = copy.deepcopy(self.reference.model)
        self.model.set_is_batch_data(True)
        self.model.eval()

    def compute(self, structures: list[Atoms]) -> list[dict[str, Any]]:
        import sevenn._keys as KEY
        from sevenn.atom_graph_data import AtomGraphData
        from sevenn.train.dataload import unlabeled_atoms_to_graph
        from torch_geometric.loader.dataloader import Collater

        ref = self.reference
        datas = []
        for atoms in structures:
            data = AtomGraphData.from_numpy_dict(
                unlabeled_atoms_to_graph(atoms, ref.cutoff, with_shift=False)
            )
            if ref.modal:
                data[KEY.DATA_MODALITY] = ref.modal
            datas.append(data)
        batch = Collater([], follow_batch=None, exclude_keys=None)(datas)
        batch.to(ref.device)
        output = self.model(batch)
        energy = output[KEY.PRED_TOTAL_ENERGY].detach().cpu().numpy().reshape(-1)
        atomic = output[KEY.ATOMIC_ENERGY].detach().cpu().numpy().reshape(-1)
        forces = output[KEY.PRED_FORCE].detach().cpu().numpy()
        stress = output[KEY.PRED_STRESS].detach().cpu().numpy().reshape(len(datas), 6)
        n_edges = np.bincount(
            output[KEY.BATCH]
            .detach()
            .cpu()
            .numpy()[output[KEY.EDGE_IDX][0].detach().cpu().numpy()],
            minlength=len(datas),
        )
        out = []
        start = 0
        for k, atoms in enumerate(structures):
            stop = start + len(atoms)
            # the conversion of SevenNetCalculator.output_to_results
            out.append(
                {
                    "free_energy": float(energy[k]),
                    "energy": float(energy[k]),
                    "energies": atomic[start:stop],
                    "forces": forces[start:stop],
                    "stress": np.array(-stress[k][[0, 1, 2, 4, 5, 3]]),
                    "num_edges": int(n_edges[k]),
                }
            )
            start = stop
        return out


def get_batched_potential(engine: str, device: str = "auto", **kwargs: Any) -> BatchedPotential:
    """A :class:`BatchedPotential` for ``engine`` (names as :func:`ionflow.potentials.get_calculator`).

    Parameters
    ----------
    engine
        Engine name, case-insensitive.
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"`` (see :func:`resolve_device`).
    **kwargs
        Engine options, as for :func:`ionflow.potentials.get_calculator` (the device
        keyword is set from ``device``).

    Raises
    ------
    UserInputError
        Unknown engine or device, or the engine's package is missing.
    """
    from ionflow.potentials import get_calculator, normalize_potential_name

    key = normalize_potential_name(engine)
    dev = resolve_device(device)
    with contextlib.redirect_stdout(io.StringIO()):
        if key == "chgnet":
            return _CHGNetPotential(dev, **kwargs)
        if key == "sevennet":
            try:
                import sevenn  # noqa: F401
                import torch_geometric  # noqa: F401
            except ImportError:
                get_calculator("sevennet", device=dev, **kwargs)  # raises the usual message
                raise
            return _SevenNetPotential(dev, **kwargs)
        if key == "toy":
            return _LoopPotential(key, "cpu", lambda: get_calculator(key, **kwargs))
        extra = {"device": dev} if key in ("mace", "sevennet") else {}
        return _LoopPotential(key, dev, lambda: get_calculator(key, **extra, **kwargs))
