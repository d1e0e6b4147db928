"""The settings of a run, their choices, and named protocols (a leaf module: it imports no other).

:class:`RunSettings` holds every value that decides a run's numbers; the command line, the
sweep plans and the API all build one, and :meth:`RunSettings.check` refuses a value no run
can use before anything loads. Names (model, dataset, states, metric, analysis) are checked
by the registry instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from .errors import MtbenchError

HRF_CHOICES = ("glover", "spm", "fir")
BACKENDS = ("torch", "torch_cuda", "himalaya", "himalaya_cuda")
PRECISIONS = ("float32", "mixed")
INNERS = ("loro", "first")
FEATURE_DTYPES = ("float16", "float32")
REDUCTIONS = ("pca", "random")


def mode_value(name: str | None):
    """What ``--mode NAME`` records as ``RunSettings.mode``: a number as a number (``1``), any other name as text."""
    if name is None:
        return None
    name = str(name).strip()
    return int(name) if name.isdigit() else name


@dataclass
class RunSettings:
    """Everything that decides a run's numbers (recorded in the results)."""

    model: str
    dataset: str
    states: list[str]
    layers: str | list[int] = "all"
    subject: str = "average"
    metric: str = "pearson"
    alphas: list[float] = field(default_factory=lambda: np.logspace(0, 8, 9).tolist())
    hrf: str = "glover"
    trim_scans: int = 0
    seed: int = 0
    backend: str = "torch"
    # "mixed": the inner-validation alpha sweep in bfloat16 where the hardware has it (2x faster
    # there; mean test r moves < 1e-4, single near-tied voxels can flip alpha); "float32": exact.
    precision: str = "mixed"
    dataset_options: dict = field(default_factory=dict)
    model_options: dict = field(default_factory=dict)
    # One alpha per outer fold shared by all voxels (max of the voxel-mean validation r).
    shared_alpha: bool = False
    # Inner validation: "loro" (leave-one-run-out over the training runs) or "first" (one fold,
    # validated on the first run that is not the test run); see mtbench.encoding.fit_nested_loro.
    inner: str = "loro"
    # "mtbench" (the settings above) or a named protocol that fixes several of them: see PROTOCOLS.
    protocol: str = "mtbench"
    # Precision of the on-disk word-feature cache ("float16" or "float32"); features are rounded to it.
    feature_dtype: str = "float16"
    # The analysis (`mtbench list analyses`; `--mode`): None is the one registered as the default,
    # which the runner and the sweep resolve before anything is named or hashed.
    mode: int | str | None = None
    # Options of the analyses that fit several states of a block together (each analysis entry
    # says which of these it reads): the states combined, the state whose width sets how many
    # features are kept, and how features are selected.
    inputs: list[str] = field(default_factory=list)
    pivot: str = "input_hidden_state"
    selection: str = "pivot"
    # Delayed copies of the aligned features, in scans (None: 1,2,3,4 for hrf="fir", none otherwise).
    delays: list[int] | None = None
    # Circular-shift permutations per fit for per-voxel p-values (0: no significance); BH-FDR level.
    permutations: int = 1000
    fdr: float = 0.05
    # Options of the analyses that compare a state with another or at one width (their entries say
    # which reads which; left out of the record at their defaults: see RunSettings.record):
    # the reference state R a state's unique variance is measured against and its block (0: the
    # state's own), the common width states are reduced to (0: the narrowest state's) and how.
    reference: str = "input_hidden_state"
    reference_layer: int = 0
    width: int = 0
    reduction: str = "pca"

    def __post_init__(self) -> None:
        # A script may pass tuples, arrays or NumPy numbers; the runner compares, hashes and records
        # (JSON) plain lists of plain numbers, so ("all",) must mean what ["all"] means.
        def plain(value):
            return value.item() if isinstance(value, np.generic) else value

        for name in ("states", "inputs", "layers", "alphas", "delays"):
            value = getattr(self, name)
            if isinstance(value, (tuple, list)) or isinstance(value, np.ndarray) and value.ndim == 1:
                setattr(self, name, [plain(v) for v in value])
        for name in ("trim_scans", "seed", "permutations", "fdr", "shared_alpha", "mode", "reference_layer", "width"):
            setattr(self, name, plain(getattr(self, name)))

    def record(self) -> dict:
        """The settings as recorded and hashed: every field, but the :data:`LATER_OPTIONS` left at their default.

        Runs recorded before those options existed keep their ids, checkpoints and manifests;
        :meth:`from_record` gives a missing option its default.
        """
        recorded = asdict(self)
        for name, default in LATER_OPTIONS.items():
            if _same(recorded[name], default):
                del recorded[name]
        return recorded

    @classmethod
    def from_record(cls, recorded: dict) -> RunSettings:
        """The settings a run recorded (``manifest["settings"]``); keys this mtbench does not know are left out."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in recorded.items() if key in known})

    def check(self) -> None:
        """Raise a one-line :class:`MtbenchError` for a value that no run can use.

        Names (model, dataset, states, metric, mode) are resolved by the registry instead. Called by
        ``mtbench run`` and for each plan of ``mtbench sweep`` before anything loads, so a bad
        value fails at once instead of after extraction, or in every cell of a sweep.
        """
        def whole(value) -> bool:
            return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

        def bad(name: str, expected: str) -> MtbenchError:
            flag = _FLAGS.get(name, f"--{name.replace('_', '-')}")
            label = f"{name} ({flag})" if flag else name
            return MtbenchError(f"{label} must be {expected}, got {getattr(self, name)!r}")

        for name in ("states", "inputs"):  # a bare string would be read letter by letter
            names = getattr(self, name)
            if isinstance(names, str) or not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names):
                raise bad(name, "a list of state names, e.g. ['all'] or ['per_head_q_rope', 'ffn_output']")
        if not self.states:  # `--states ""`: nothing to extract, found only after the model loaded
            raise MtbenchError("states (--states) is empty: give 'all' or a comma list of state names "
                               "(`mtbench list states`)")
        layers = self.layers
        if not (isinstance(layers, str) or isinstance(layers, Sequence) and all(whole(n) for n in layers)):
            raise bad("layers", "'all', a range such as '1-5,8', or a list of 1-based block numbers")
        try:  # a list, a tuple or an array of numbers; a string is the CLI's form, not a value
            alphas = None if isinstance(self.alphas, (str, bytes)) else np.asarray(self.alphas, dtype=float)
        except (TypeError, ValueError):
            alphas = None
        if alphas is None or alphas.ndim != 1 or not alphas.size or not np.all(np.isfinite(alphas) & (alphas > 0)):
            raise bad("alphas", "a non-empty list of positive, finite penalties, e.g. [1, 100, 1e4]")
        for name, choices in (("hrf", HRF_CHOICES), ("backend", BACKENDS), ("precision", PRECISIONS),
                              ("inner", INNERS), ("feature_dtype", FEATURE_DTYPES)):
            if getattr(self, name) not in choices:
                raise bad(name, f"one of {', '.join(choices)}")
        if not (whole(self.trim_scans) and self.trim_scans >= 0):
            raise bad("trim_scans", "a whole number of scans >= 0 (dropped at both ends of each run)")
        if not (whole(self.permutations) and self.permutations >= 0):
            raise bad("permutations", "a whole number >= 0 (0: no significance)")
        if not whole(self.seed):
            raise bad("seed", "a whole number")
        if not (isinstance(self.fdr, (int, float)) and 0 < self.fdr < 1):
            raise bad("fdr", "a level in (0, 1)")
        if not isinstance(self.shared_alpha, bool):
            raise bad("shared_alpha", "true or false")
        if not (self.mode is None or whole(self.mode) or isinstance(self.mode, str) and self.mode):
            raise bad("mode", "the name of an analysis (`mtbench list analyses`)")
        for name in ("reference_layer", "width"):
            if not (whole(getattr(self, name)) and getattr(self, name) >= 0):
                raise bad(name, "a whole number >= 0 (0: " + ("the state's own block)" if name == "reference_layer"
                                                              else "the narrowest state's width)"))
        if self.reduction not in REDUCTIONS:
            raise bad("reduction", f"one of {', '.join(REDUCTIONS)}")
        if not (isinstance(self.reference, str) and self.reference):
            raise bad("reference", "a state name, e.g. input_hidden_state")
        delays = self.delays
        if delays is not None and (isinstance(delays, str) or np.ndim(delays) != 1 or not len(delays)
                                   or not all(whole(d) and d >= 0 for d in delays)):
            raise bad("delays", "a non-empty list of scans >= 0, e.g. [1, 2, 3, 4]")


# Analysis options added after runs were recorded, with their defaults: left out of a run's record
# (manifest, run id, checkpoint) when at the default, so the ids of runs that do not use them stay.
LATER_OPTIONS = {"reference": "input_hidden_state", "reference_layer": 0, "width": 0, "reduction": "pca"}


# RunSettings fields whose command-line flag is not --<field name> (None: set by a protocol or a plan only)
_FLAGS = {"trim_scans": "--trim", "shared_alpha": None, "inner": None}


# Settings each protocol fixes. "mindtransformer" reproduces the reference protocol: Glover HRF
# on word events, 10 scans trimmed at both ends of each run (then z-scored per run), 16 alphas
# logspace(2, 7), one alpha shared by all voxels chosen on the first remaining run only, refit
# on all training runs, Pearson r on the test run averaged over the outer folds.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "mtbench": {},
    "mindtransformer": {
        "trim_scans": 10,
        "alphas": np.logspace(2, 7, 16).tolist(),
        "shared_alpha": True,
        "inner": "first",
        "hrf": "glover",
        "precision": "float32",
        "delays": None,
    },
}
# How users set each field on the command line (for error messages).
_PROTOCOL_FLAGS = {"trim_scans": "--trim", "alphas": "--alphas", "hrf": "--hrf", "precision": "--precision", "delays": "--delays"}


def resolve_protocol(settings: RunSettings, explicit: Sequence[str] = ()) -> RunSettings:
    """The effective settings of ``settings.protocol`` (a new object; ``settings`` is unchanged).

    A protocol sets the fields it fixes. A field may be left at its ``RunSettings`` default
    or set to the protocol's own value; any other value conflicts and raises, as does any
    field named in ``explicit`` (fields the user gave on purpose, e.g. ``--trim 0``) whose
    value differs from the protocol's.

    Raises
    ------
    MtbenchError
        Unknown protocol, or a setting that conflicts with it.
    """
    fixed = PROTOCOLS.get(settings.protocol)
    if fixed is None:
        raise MtbenchError(f"unknown protocol {settings.protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    defaults = {f.name: (f.default_factory() if callable(f.default_factory) else f.default)
                for f in fields(RunSettings)}
    for name, wanted in fixed.items():
        value = getattr(settings, name)
        if _same(value, wanted) or (name not in explicit and _same(value, defaults[name])):
            continue
        flag = _PROTOCOL_FLAGS.get(name, name)
        raise MtbenchError(f"--protocol {settings.protocol} sets {name}={_show(wanted)}, which conflicts with "
                           f"{flag} {_show(value)}; drop {flag} or use --protocol mtbench")
    return replace(settings, **fixed)


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple, np.ndarray)) or isinstance(b, (list, tuple, np.ndarray)):
        a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
        return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-9, atol=0))
    return a == b


def _show(value) -> str:
    if isinstance(value, (list, tuple, np.ndarray)) and len(value) > 3:
        return f"[{value[0]:g}..{value[-1]:g}] ({len(value)} values)"
    return str(value)
