"""``mtbench compare``: is fit A's held-out score really higher than fit B's, per voxel and parcel?

Two fits of one run (two (layer, state)s) or of two runs (two models, a model and its control)
on the same dataset and subject are refitted with the alphas each outer fold chose (stored in
``folds.parquet``: nothing is searched again), their held-out predictions of every test run
compared on the same scans by :class:`.stats.PairedTest`, and the result written as a folder that
:data:`.schema.COMPARE_SCHEMA` describes. With one run per subject on each side, the per-subject
differences are also tested across subjects (one-sample t-test or its sign-flip permutation, BH-FDR
across voxels).
"""

from __future__ import annotations

import re
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from mtbench import __version__
from mtbench.encoding import fit_nested_loro
from mtbench.errors import MtbenchError
from mtbench.paths import writable_folder
from mtbench.registry import get_registry
from mtbench.runner import prepare_inputs
from mtbench.schema import read_map, validate_run
from mtbench.settings import RunSettings

from .schema import COMPARE_SCHEMA, validate_comparison
from .stats import GROUP_TESTS, PairedTest, bh, holm_adjust, one_sample_t, sign_flip_pvalues
from .write import write_comparison

FOLDS = "folds.parquet"
#: a refit reproduces the run's stored held-out r to float32 round-off; more means other data
REPRODUCE_TOLERANCE = 2e-3


def parse_fit(spec: str) -> tuple[int, str]:
    """``L4:per_head_q_rope`` (or ``4:per_head_q_rope``) -> ``(4, "per_head_q_rope")``."""
    match = re.fullmatch(r"[Ll]?(\d+):([a-z0-9_]+)", (spec or "").strip())
    if not match:
        raise MtbenchError(f"fit {spec!r} is not LAYER:STATE; write e.g. L4:per_head_q_rope")
    return int(match.group(1)), match.group(2)


def fit_label(key: tuple[int, str]) -> str:
    return f"L{key[0]}:{key[1]}"


@dataclass
class Side:
    """One fit of one finished run: where it is, its settings and which (layer, state)."""

    run: object  # mtbench.schema.RunFolder
    settings: RunSettings
    key: tuple[int, str]

    @property
    def run_id(self) -> str:
        return self.run.manifest["run_id"]

    @property
    def subject(self) -> str:
        return str(self.settings.subject)


def open_side(run_dir: Path, spec: str | None, which: str) -> Side:
    """A run folder checked for what a comparison refits from, and the fit ``spec`` names in it.

    Raises
    ------
    MtbenchError
        Not a run, an analysis that cannot refit, no ``folds.parquet``, no such fit, or no
        ``--a``/``--b`` for a run of several fits.
    """
    import pyarrow.parquet as pq

    run = validate_run(Path(run_dir))
    analysis = get_registry().analysis(run.mode).load()
    if analysis.rescore is None:
        raise MtbenchError(f"{run_dir}: a Mode {run.mode} run; compare refits (layer, state) fits from a run's stored "
                           "alphas (Mode 1 runs): compare Mode 1 runs")
    if not (run.path / FOLDS).is_file():
        raise MtbenchError(f"{run_dir}: no {FOLDS} (made with --no-folds, or by an older mtbench): it has no per-fold "
                           "alphas to refit from; re-run it with `mtbench run` (without --no-folds)")
    settings = RunSettings.from_record(run.manifest.get("settings", {}))
    first_voxel = pq.read_table(run.path / "voxels.parquet", columns=["layer", "state"],
                                filters=[("voxel", "=", 0)]).to_pydict()
    fits = [(int(layer), str(state)) for layer, state in zip(first_voxel["layer"], first_voxel["state"])]
    if spec is None:
        if len(fits) != 1:
            raise MtbenchError(f"{run_dir} has {len(fits)} fits; choose one with --{which} LAYER:STATE (e.g. "
                               f"--{which} {fit_label(fits[0])})")
        return Side(run, settings, fits[0])
    key = parse_fit(spec)
    if key not in fits:
        layers = sorted({f[0] for f in fits})
        states = list(dict.fromkeys(f[1] for f in fits))
        raise MtbenchError(f"{run_dir} has no fit {fit_label(key)} (--{which}); it fitted layers "
                           f"{', '.join(map(str, layers))} of states {', '.join(states)}")
    return Side(run, settings, key)


def check_comparable(a: Side, b: Side) -> None:
    """Same dataset (name, version, stimulus), subject and scans; not the same fit twice."""
    if a.run.path.resolve() == b.run.path.resolve() and a.key == b.key:
        raise MtbenchError(f"--a and --b are the same fit ({fit_label(a.key)} of {a.run_id}); compare two different "
                           "fits (--a L4:per_head_q_rope --b L4:per_head_q) or two runs")
    ma, mb = a.run.manifest.get("dataset", {}), b.run.manifest.get("dataset", {})
    for field in ("name", "version", "stimulus"):
        if ma.get(field) != mb.get(field):
            raise MtbenchError(f"runs {a.run_id} and {b.run_id} are on different data (dataset {field} "
                               f"{ma.get(field)!r} vs {mb.get(field)!r}); compare fits of the same dataset and subject")
    if a.subject != b.subject:
        raise MtbenchError(f"runs {a.run_id} and {b.run_id} are of different subjects ({a.subject} vs {b.subject}); "
                           "compare fits of the same subject (several subjects: one run per subject on each side)")
    for field in ("trim_scans", "dataset_options"):
        if getattr(a.settings, field) != getattr(b.settings, field):
            raise MtbenchError(f"runs {a.run_id} and {b.run_id} differ in {field} ({getattr(a.settings, field)!r} vs "
                               f"{getattr(b.settings, field)!r}): their held-out scans differ; compare runs made "
                               "with the same data settings")


def fold_alphas(side: Side) -> tuple[np.ndarray, np.ndarray]:
    """The fit's alpha and held-out score per outer fold and voxel, each (n_runs, n_voxels), from folds.parquet."""
    import pyarrow.parquet as pq

    layer, state = side.key
    table = pq.read_table(side.run.path / FOLDS, columns=["fold", "voxel", "alpha", "test"],
                          filters=[("layer", "=", layer), ("state", "=", state)])
    fold, voxel = table["fold"].to_numpy(), table["voxel"].to_numpy()
    n_runs, n_vox = int(fold.max()) + 1, int(voxel.max()) + 1
    if len(fold) != n_runs * n_vox:
        raise MtbenchError(f"{side.run.path / FOLDS}: {len(fold)} rows for {fit_label(side.key)}, expected {n_runs} "
                           f"folds x {n_vox} voxels; the run is corrupt, re-run it with `mtbench run`")
    alpha, test = np.empty((n_runs, n_vox)), np.empty((n_runs, n_vox), dtype=np.float32)
    alpha[fold, voxel] = table["alpha"].to_numpy()
    test[fold, voxel] = table["test"].to_numpy()
    return alpha, test


def held_out(sides: list[Side], progress=None) -> tuple[list[np.ndarray], list[list[np.ndarray]], object]:
    """BOLD per run and each side's held-out predictions, refitted with its stored alphas (all from one run).

    Returns
    -------
    y_runs : list of ndarray, each (n_scans_r, n_voxels)
    predictions : list (one per side) of lists of ndarray, each (n_scans_r, n_voxels)
    dataset : the dataset the run was fitted on
    """
    first = sides[0]
    analysis = get_registry().analysis(first.run.mode).load()
    keys = [s.key for s in sides]
    settings = replace(first.settings, layers=sorted({k[0] for k in keys}), states=list(dict.fromkeys(k[1] for k in keys)))
    inputs = prepare_inputs(settings, analysis, progress=progress)
    recorded = first.run.manifest.get("dataset", {})
    dataset = inputs.dataset
    if (recorded.get("version"), recorded.get("stimulus")) != (dataset.version, dataset.stimulus.fingerprint()):
        raise MtbenchError(f"dataset {dataset.name} has changed since run {first.run_id} (version or stimulus differ); "
                           "its alphas do not apply: run `mtbench run` again")
    predictions = []
    for side in sides:
        alpha, stored = fold_alphas(side)
        if alpha.shape[1] != inputs.y_runs[0].shape[1] or alpha.shape[0] != len(inputs.y_runs):
            raise MtbenchError(f"run {side.run_id} has {alpha.shape[0]} folds x {alpha.shape[1]} voxels, dataset "
                               f"{dataset.name} {len(inputs.y_runs)} runs x {inputs.y_runs[0].shape[1]} voxels; run "
                               "`mtbench run` again")
        result = fit_nested_loro(inputs.scans[side.key], inputs.y_runs, side.settings.alphas,
                                 backend=side.settings.backend, precision=side.settings.precision,
                                 alpha_per_run=alpha, return_predictions=True)
        if side.settings.metric == "pearson":  # the refit must be the fit the run scored
            worst = float(np.nanmax(np.abs(result.test_per_run - stored)))
            if worst > REPRODUCE_TOLERANCE:
                raise MtbenchError(f"refitting {fit_label(side.key)} of {side.run_id} does not reproduce its held-out "
                                   f"r (off by {worst:.3g}): the data or features changed; run `mtbench run` again")
        predictions.append(result.predictions)
    return inputs.y_runs, predictions, dataset


@dataclass
class SubjectComparison:
    subject: str
    result: object  # stats.PairedResult


def group_test(per_subject: list[SubjectComparison], level: float, method: str = "t", n_perm: int = 10000,
               seed: int = 0) -> tuple[dict, list[dict]]:
    """Test across subjects of the per-subject Δr, per voxel (BH across voxels) and per parcel (the subjects'
    parcel means; Holm and BH across parcels): one-sample t (``method="t"``) or sign-flip permutation of the
    t statistic (``"sign-flip"``); the interval is the t interval either way."""
    if method not in GROUP_TESTS:
        raise MtbenchError(f"unknown group test {method!r}: choose one of {', '.join(GROUP_TESTS)}")
    deltas = np.stack([c.result.delta for c in per_subject])  # (S, V)
    n = deltas.shape[0]
    if n < 3:
        raise MtbenchError(f"a group test needs at least 3 subjects, got {n}; give one run per subject on each side")
    parcel_deltas = np.array([[row["delta"] for row in c.result.parcels] for c in per_subject])
    mean, se, p, low, high = one_sample_t(deltas, level)
    pm, ps, pp, plo, phi = one_sample_t(parcel_deltas, level)
    if method == "sign-flip":
        p, pp = sign_flip_pvalues(deltas, n_perm, seed), sign_flip_pvalues(parcel_deltas, n_perm, seed)
    voxels = {"r_a": np.mean([c.result.r_a for c in per_subject], 0),
              "r_b": np.mean([c.result.r_b for c in per_subject], 0),
              "delta": mean, "se": se, "ci_low": low, "ci_high": high, "p_value": p, "q_value": bh(p)}
    holm, q = holm_adjust(pp[1:]), bh(pp[1:])
    parcels = []
    for g, row in enumerate(per_subject[0].result.parcels):
        parcels.append({**{k: row[k] for k in ("parcel_id", "parcel", "n_voxels")}, "delta": float(pm[g]),
                        "se": float(ps[g]), "ci_low": float(plo[g]), "ci_high": float(phi[g]), "p_value": float(pp[g]),
                        "p_holm": float(pp[0] if g == 0 else holm[g - 1]),
                        "q_value": float(pp[0] if g == 0 else q[g - 1])})
    return voxels, parcels


def pair_runs(a_dirs: list[Path], b_dirs: list[Path] | None, fit_a: str | None, fit_b: str | None) -> list[tuple[Side, Side]]:
    """(A, B) per subject, every pair checked comparable, before any refit."""
    a_sides = [open_side(d, fit_a, "a") for d in a_dirs]
    if b_dirs is None:
        if fit_b is None:
            raise MtbenchError("give the second fit: --b LAYER:STATE (two fits of one run), or a second run RUN_B")
        b_sides = [open_side(d, fit_b, "b") for d in a_dirs]
    else:
        b_sides = [open_side(d, fit_b, "b") for d in b_dirs]
    by_subject = {}
    for side in b_sides:
        if side.subject in by_subject:
            raise MtbenchError(f"runs {by_subject[side.subject].run_id} and {side.run_id} are both of subject "
                               f"{side.subject}; give one run per subject on each side")
        by_subject[side.subject] = side
    pairs, seen = [], set()
    for side in a_sides:
        if side.subject in seen:
            raise MtbenchError(f"two runs of subject {side.subject} on side A; give one run per subject on each side")
        seen.add(side.subject)
        if side.subject not in by_subject:
            raise MtbenchError(f"run {side.run_id} (subject {side.subject}) has no run of the same subject on side B; "
                               f"side B has {', '.join(sorted(by_subject))}")
        check_comparable(side, by_subject[side.subject])
        pairs.append((side, by_subject[side.subject]))
    if len(pairs) != len(b_sides):
        extra = sorted(set(by_subject) - seen)
        raise MtbenchError(f"side B has subjects {', '.join(extra)} that side A lacks; give the same subjects on both sides")
    return pairs


def default_id(pairs: list[tuple[Side, Side]]) -> str:
    a, b = pairs[0]
    same = a.run.path.resolve() == b.run.path.resolve()
    subjects = "" if len(pairs) == 1 else f"-{len(pairs)}subjects"
    name = (f"{a.run_id}-{fit_label(a.key)}-vs-{fit_label(b.key)}" if same else
            f"{a.run_id}-{fit_label(a.key)}-vs-{b.run_id}-{fit_label(b.key)}") + subjects
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)[:200]


def compare(a_dirs, b_dirs=None, fit_a: str | None = None, fit_b: str | None = None, *, parcels: Path | None = None,
            parcel_names: Path | None = None, out: Path | None = None, method: str = "corrected-t", n_boot: int = 1000,
            lags: int | None = None, level: float = 0.95, fdr: float = 0.05, seed: int = 0, group: str = "t",
            progress=None) -> Path:
    """Compare two fits per voxel and parcel (and across subjects); write the comparison folder.

    Parameters
    ----------
    a_dirs, b_dirs : list of Path
        Run folders, one per subject (``b_dirs`` None: the same runs, two fits of each).
    fit_a, fit_b : str, optional
        ``LAYER:STATE`` in each run (optional for a run of one fit).
    parcels, parcel_names : Path, optional
        Label image and names (as ``mtbench rescore``); default the dataset's parcels.
    out : Path, optional
        The comparison folder; default ``RESULTS/compare/<id>`` next to the first run's ``runs/``.
    method, n_boot, lags, level, seed
        :class:`.stats.PairedTest`.
    fdr : float
        BH level of the ``significant`` columns and map.
    group : {"t", "sign-flip"}
        Test across subjects (several subjects only): :func:`group_test`.

    Returns
    -------
    Path
        The comparison folder (validated against :data:`.schema.COMPARE_SCHEMA`).
    """
    start = time.perf_counter()
    if not 0 < fdr < 1:
        raise MtbenchError(f"--fdr {fdr} must be between 0 and 1 (e.g. 0.05)")
    test = PairedTest(method=method, n_boot=n_boot, lags=lags, level=level, seed=seed)  # option errors first
    if group not in GROUP_TESTS:
        raise MtbenchError(f"unknown group test {group!r}: choose one of {', '.join(GROUP_TESTS)}")
    pairs = pair_runs([Path(d) for d in a_dirs], None if b_dirs is None else [Path(d) for d in b_dirs], fit_a, fit_b)
    out = Path(out) if out is not None else _default_folder(pairs[0][0].run.path) / default_id(pairs)
    if out.exists():
        raise MtbenchError(f"{out} already exists; give another --out")
    writable_folder(out.parent)
    mask_img = read_map(pairs[0][0].run.path, "mask.nii.gz")
    other = None
    if parcels is not None:  # before any refit: a bad label file costs nothing
        from mtbench_plugins.commands.runs.rescore import read_parcels

        other = read_parcels(Path(parcels), mask_img, parcel_names)
    comparisons = []
    with progress if progress is not None else nullcontext():
        for a, b in pairs:
            if a.run.path.resolve() == b.run.path.resolve():
                y_runs, (pa, pb), dataset = held_out([a, b], progress)
            else:
                y_runs, (pa,), dataset = held_out([a], progress)
                y_b, (pb,), _ = held_out([b], progress)
                if any(not np.array_equal(u, v) for u, v in zip(y_runs, y_b)) or len(y_runs) != len(y_b):
                    raise MtbenchError(f"runs {a.run_id} and {b.run_id} were fitted on different BOLD; compare runs of "
                                       "the same dataset, subject and data settings")
            labels, names = other if other is not None else (dataset.parcels.labels, dataset.parcels.names)
            comparisons.append(SubjectComparison(a.subject, test.fit(y_runs, pa, pb, labels, names)))
            del y_runs, pa, pb
    atlas = f"{Path(parcels).name} (--parcels)" if parcels is not None else dataset.parcels.atlas
    a, b = pairs[0]
    meta = {
        "schema_version": COMPARE_SCHEMA["schema_version"], "kind": COMPARE_SCHEMA["kind"], "comparison_id": out.name,
        "mtbench_version": __version__, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "a": {"fit": fit_label(a.key), "runs": [p[0].run_id for p in pairs], "model": a.run.manifest["model"]["name"]},
        "b": {"fit": fit_label(b.key), "runs": [p[1].run_id for p in pairs], "model": b.run.manifest["model"]["name"]},
        "dataset": {k: a.run.manifest["dataset"].get(k) for k in ("name", "version")} | {"atlas": atlas},
        "subjects": [c.subject for c in comparisons],
        "test": {"method": method, "lags": {c.subject: c.result.lags for c in comparisons}, "level": level, "fdr": fdr,
                 "n_boot": n_boot if method == "block-bootstrap" else 0, "seed": seed,
                 "statistic": "held-out Pearson r of A minus B, averaged over test runs",
                 "group": ({"t": "one-sample t-test across subjects",
                            "sign-flip": "sign-flip permutation of the t statistic across subjects"}[group]
                           if len(comparisons) > 1 else None)},
    }
    voxels = None
    if len(comparisons) > 1:
        voxels, group_parcels = group_test(comparisons, level, group, seed=seed)
    else:
        group_parcels = None
    meta["seconds"] = round(time.perf_counter() - start, 1)
    write_comparison(out, meta, comparisons, (voxels, group_parcels), labels, mask_img, fdr)
    validate_comparison(out)
    return out


def _default_folder(run_dir: Path) -> Path:
    runs = Path(run_dir).resolve().parent
    if runs.name != "runs":
        raise MtbenchError(f"{run_dir} is not in a results folder (RESULTS/runs/<id>); say where the comparison goes "
                           "with --out FOLDER")
    return runs.parent / "compare"


def remove_partial(folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder, ignore_errors=True)

