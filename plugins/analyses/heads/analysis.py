"""Head-resolved maps (``--mode heads``): which attention head of which layer drives a voxel.

The per-head states (``per_head_q``, ``per_head_q_rope``, ``per_head_k``, ``per_head_k_rope``,
``per_head_v``, ``per_head_context_vector``) are extracted as ``heads x head_dim`` flattened
head-major. Each head is fitted on its own (Mode 1's nested leave-one-run-out ridge on its
``head_dim`` columns); keys and values have the model's ``n_kv`` heads (grouped-query
attention), queries and context vectors its ``n_heads``. The best (layer, state, head) per
voxel and parcel is chosen on validation as Mode 1 chooses a (layer, state), and scored on
the held-out runs (nested). Written: per-head scores per parcel, the winner per parcel, the
winning head per voxel (NIfTI), and a head x layer heatmap per parcel.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
from rich.table import Table

from mtbench.display import print_truth_check
from mtbench.encoding import fit_nested_loro
from mtbench.errors import MtbenchError
from mtbench.registry import get_registry, load_dataset
from mtbench.results import WHOLE_BRAIN, parcel_groups, rows_with_identity, volume_image, write_parquet
from mtbench.runner import parse_states
from mtbench.settings import RunSettings

from ..figures import head_layer_heatmap, score_map
from ..mode1.tables import ScoreTable, best_per_voxel, summarize

QUERY_STATES = ("per_head_q", "per_head_q_rope", "per_head_context_vector")  # n_heads heads
KEY_VALUE_STATES = ("per_head_k", "per_head_k_rope", "per_head_v")  # n_kv heads (grouped-query attention)
PER_HEAD = QUERY_STATES + KEY_VALUE_STATES
PER_RUN = ("test_per_run", "validation_per_run", "alpha_per_run")


def head_counts(adapter) -> dict[str, int]:
    """Heads of each per-head state: ``n_heads`` for queries and context vectors, ``n_kv`` for keys and values.

    From ``adapter.heads`` (``{"query": n, "key_value": n_kv}``) when the adapter says, else from a
    Hugging Face config (``num_attention_heads``, ``num_key_value_heads``; a multimodal model's
    ``text_config``).
    """
    heads = getattr(adapter, "heads", None)
    if heads is None:
        config = getattr(getattr(adapter, "model", None), "config", None)
        config = getattr(config, "text_config", None) or config
        n_q = getattr(config, "num_attention_heads", None)
        heads = {"query": n_q, "key_value": getattr(config, "num_key_value_heads", None) or n_q}
    if not heads.get("query"):
        raise MtbenchError(f"model {getattr(adapter, 'name', '?')} does not say how many attention heads it has; "
                           "--mode heads needs a transformer (a Hugging Face model)")
    return {s: int(heads["query"] if s in QUERY_STATES else heads["key_value"]) for s in PER_HEAD}


def fit_heads(x_runs: list[np.ndarray], y_runs, alphas, n_heads: int, **options) -> dict[str, np.ndarray]:
    """One nested fit per head of a per-head state (``x_runs``: head-major columns); per-run arrays (n_heads, ...)."""
    dim = x_runs[0].shape[1]
    if dim % n_heads:
        raise MtbenchError(f"a per-head state of {dim} features cannot be split into {n_heads} heads")
    width = dim // n_heads
    out = {name: [] for name in PER_RUN}
    for h in range(n_heads):
        result = fit_nested_loro([np.ascontiguousarray(x[:, h * width:(h + 1) * width]) for x in x_runs], y_runs,
                                 alphas, **options)
        for name in PER_RUN:
            out[name].append(np.asarray(getattr(result, name), dtype=np.float32))
    return {name: np.stack(values) for name, values in out.items()}


@dataclass
class HeadsResult:
    """A heads run: per (layer, state, head) Mode 1's per-run arrays."""

    keys: list[tuple[int, str, int]]
    arrays: dict[str, np.ndarray]  # PER_RUN name -> (n_fits, n_runs, n_voxels)
    n_heads: dict[str, int]
    labels: np.ndarray
    names: dict
    manifest: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        test, val, alpha = (self.arrays[name] for name in PER_RUN)
        # Mode 1's table and choice, with the fit's index as its "state" (mapped back below)
        self.table = ScoreTable(keys=[(k[0], i) for i, k in enumerate(self.keys)], test=test.mean(1),
                                validation=val.mean(1), alpha=np.exp(np.log(alpha).mean(1)).astype(np.float32),
                                test_per_run=test, validation_per_run=val, alpha_per_run=alpha)
        self.summary = []
        for row in summarize(self.table, self.labels, self.names, None):
            layer, state, head = self.keys[row["state"]]
            self.summary.append({k: row[k] for k in ("parcel_id", "parcel", "n_voxels")} | {
                "layer": layer, "state": state, "head": head, "n_heads": self.n_heads[state]} | {
                k: row[k] for k in ("test", "validation", "folds_agree", "voxel_best_test", "test_ci_low",
                                    "test_ci_high")})

    def truth_check(self, truth: dict | None) -> list[dict]:
        """Each planted (parcel, layer, state) against the winning head's (layer, state); the head found is named."""
        by_parcel = {row["parcel"]: row for row in self.summary}
        return [{"parcel": p["parcel"], "planted": f"L{p['layer']} {p['state']}" + (f" h{p['head']}" if "head" in p
                                                                                    else ""),
                 "found": f"L{row['layer']} {row['state']} h{row['head']}", "test": row["test"],
                 "recovered": (row["layer"], row["state"]) == (p["layer"], p["state"])
                 and p.get("head", row["head"]) == row["head"]}
                for p in (truth or {}).get("planted", []) if (row := by_parcel.get(p["parcel"]))]

    def write_files(self, folder: Path, meta: dict, mask_img, truth: dict | None) -> None:
        write_parquet(folder / "heads_summary.parquet", rows_with_identity(meta, self.summary), meta)
        rows = [{"layer": layer, "state": state, "head": head, "n_heads": self.n_heads[state], "parcel_id": pid,
                 "parcel": name, "n_voxels": int(idx.size), "test": float(self.table.test[f, idx].mean()),
                 "validation": float(self.table.validation[f, idx].mean())}
                for f, (layer, state, head) in enumerate(self.keys)
                for pid, name, idx in parcel_groups(self.labels, self.names)]
        write_parquet(folder / "heads.parquet", rows_with_identity(meta, rows), meta)
        n_fits, n_runs, n_vox = self.arrays["test_per_run"].shape
        folds = {"layer": np.repeat([k[0] for k in self.keys], n_runs * n_vox).astype(np.int16),
                 "state": np.repeat([k[1] for k in self.keys], n_runs * n_vox),
                 "head": np.repeat([k[2] for k in self.keys], n_runs * n_vox).astype(np.int16),
                 "fold": np.tile(np.repeat(np.arange(n_runs, dtype=np.int16), n_vox), n_fits),
                 "voxel": np.tile(np.arange(n_vox, dtype=np.int32), n_fits * n_runs)}
        folds |= {name.split("_")[0]: self.arrays[name].ravel() for name in PER_RUN}
        write_parquet(folder / "heads_folds.parquet", folds, meta)
        mask = np.asarray(mask_img.dataobj) > 0
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), mask_img.affine), folder / "maps" / "mask.nii.gz")
        best, best_test = best_per_voxel(self.table)
        nib.save(volume_image((best + 1).astype(np.int16), mask, mask_img.affine), folder / "maps" / "best_head.nii.gz")
        nib.save(volume_image(best_test.astype(np.float32), mask, mask_img.affine),
                 folder / "maps" / "best_head_test_r.nii.gz")
        codes = {str(f + 1): f"L{layer} {state} h{head}" for f, (layer, state, head) in enumerate(self.keys)}
        (folder / "maps" / "index.json").write_text(json.dumps({"best_head.nii.gz": codes}, indent=2))
        if truth is not None:
            (folder / "truth.json").write_text(json.dumps(truth, indent=2, sort_keys=True))
        (folder / "manifest.json").write_text(json.dumps(meta, indent=2, sort_keys=True))


class Heads:
    """One fit per attention head: see the module docstring."""

    tag = "heads"
    takes_states = True
    folds_optional = False
    rescore = None
    board_legend = ("heads rows: per parcel the best (layer, per-head state, head), chosen on validation; test: "
                    "nested held-out r; the head is in the note.")
    board_columns: dict = {}

    def check(self, settings: RunSettings) -> None:
        """Only per-head states can be split into heads."""
        other = [s for s in settings.states if s != "all" and s not in PER_HEAD]
        if other:
            raise MtbenchError(f"state {other[0]!r} has no heads: --mode heads fits {', '.join(PER_HEAD)} (or all)")

    def states(self, settings: RunSettings, available=None) -> list[str]:
        """The per-head states asked for (``all``: every per-head state of the model), canonical order."""
        if available is None:
            return list(settings.states)
        states = [s for s in parse_states(settings.states, list(available)) if s in PER_HEAD]
        if not states:  # before the extraction, not after
            raise MtbenchError("this model has no per-head state (--mode heads fits attention heads: "
                               f"{', '.join(PER_HEAD)})")
        return states

    def fit(self, inputs, settings: RunSettings, metric, *, progress=None, checkpoint=None, folds: bool = True):
        counts = head_counts(inputs.adapter)
        options = dict(backend=settings.backend, score=metric.score, precision=settings.precision,
                       shared_alpha=settings.shared_alpha, inner=settings.inner)
        task = progress.add_task("fit ridge per head", total=len(inputs.layers) * len(inputs.states)) \
            if progress is not None else None
        keys, parts = [], []
        for layer in inputs.layers:
            for state in inputs.states:
                per_head = fit_heads(inputs.scans.pop((layer, state)), inputs.y_runs, settings.alphas, counts[state],
                                     **options)
                keys += [(layer, state, h) for h in range(counts[state])]
                parts.append(per_head)
                if task is not None:
                    progress.update(task, advance=1, description=f"fit ridge per head L{layer} {state}")
        arrays = {name: np.concatenate([p[name] for p in parts]) for name in PER_RUN}
        n_heads = {s: counts[s] for s in inputs.states}
        parcels = inputs.dataset.parcels
        return HeadsResult(keys, arrays, n_heads, parcels.labels, parcels.names, {"heads": {"n_heads": n_heads}})

    def print_summary(self, output, console) -> None:
        table = Table(title="Best head per parcel (chosen on validation)",
                      caption="r test: nested held-out r of choosing the best (layer, state, head) inside each fold")
        for column in ("parcel", "layer", "state", "head", "r val", "r test", "agree"):
            table.add_column(column, justify="left" if column in ("parcel", "state") else "right")
        for row in [output.summary[0], *sorted(output.summary[1:], key=lambda r: -r["test"])[:15]]:
            table.add_row(row["parcel"], str(row["layer"]), row["state"], f"{row['head']}/{row['n_heads']}",
                          f"{row['validation']:.3f}", f"{row['test']:.3f}", f"{row['folds_agree']:.0%}")
        console.print(table)
        print_truth_check(output, "Planted truth: recovered as a head?", "r test", out=console)

    def combine(self, runs, meta: dict) -> HeadsResult:
        parts = [_read_folds(run.path) for run in runs]
        keys = [key for k, _ in parts for key in k]
        if twice := [key for key, n in Counter(keys).items() if n > 1]:
            raise MtbenchError(f"layer {twice[0][0]} {twice[0][1]} is fitted by more than one of the runs; combine "
                               "runs that fit different (layer, state)s")
        order = get_registry().names("state")
        rank = sorted(range(len(keys)), key=lambda i: (keys[i][0], order.index(keys[i][1]), keys[i][2]))
        arrays = {name: np.concatenate([a[name] for _, a in parts])[rank] for name in PER_RUN}
        keys = [keys[i] for i in rank]
        n_heads = {s: n for run in runs for s, n in run.manifest["heads"]["n_heads"].items()}
        meta["settings"]["layers"] = sorted({k[0] for k in keys})
        meta["settings"]["states"] = list(dict.fromkeys(k[1] for k in keys))
        settings = RunSettings.from_record(meta["settings"])
        dataset = load_dataset(settings.dataset, **settings.dataset_options)
        return HeadsResult(keys, arrays, n_heads, dataset.parcels.labels, dataset.parcels.names,
                           {"heads": {"n_heads": n_heads}})

    def board_cells(self, run) -> list[dict]:
        return [{"parcel_id": r["parcel_id"], "parcel": r["parcel"], "n_voxels": r["n_voxels"], "layer": r["layer"],
                 "state": r["state"], "test": r["test"], "test_normalized": None, "ceiling": None,
                 "validation": r["validation"], "folds_agree": r["folds_agree"], "voxel_best_test": r["voxel_best_test"],
                 "top_state": r["state"], "top_state_share": None, "tied_states": "",
                 "note": f"head {r['head']} of {r['n_heads']}"}
                for r in _rows(run.path / "heads_summary.parquet")]

    def figures(self, run):
        rows = _rows(run.path / "heads.parquet")
        out = [("best_head_map.png", "Nested held-out r of each voxel's best head, MNI152",
                score_map(run.path, "best_head_test_r.nii.gz", title="Held-out r of the best head per voxel"))]
        for row in _rows(run.path / "heads_summary.parquet"):
            mine = [r for r in rows if r["parcel_id"] == row["parcel_id"] and r["state"] == row["state"]]
            name = "whole_brain" if row["parcel"] == WHOLE_BRAIN else f"parcel_{row['parcel_id']:03d}"
            out.append((f"heads_{name}.png", f"{row['parcel']}: head x layer, {row['state']}",
                        head_layer_heatmap(mine, row)))
        return out

    def sweep_cells(self, base: RunSettings, states, layers, options: dict) -> list[RunSettings]:
        return [replace(base, states=[state], layers=[layer], **options) for layer in layers for state in states
                if state in PER_HEAD]

    def cell_label(self, settings: RunSettings) -> str:
        return f"heads-{settings.states[0]}"

    def cost(self, settings: RunSettings) -> tuple[int, int]:
        return 1, 16  # up to a few dozen narrow fits (one per head)


def _rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def _read_folds(run_dir: Path) -> tuple[list, dict]:
    data = pq.read_table(Path(run_dir) / "heads_folds.parquet")
    n_runs, n_vox = int(data["fold"].to_numpy().max()) + 1, int(data["voxel"].to_numpy().max()) + 1
    layer, state, head = data["layer"].to_numpy(), data["state"].to_pylist(), data["head"].to_numpy()
    keys = [(int(layer[i]), state[i], int(head[i])) for i in range(0, len(state), n_runs * n_vox)]
    arrays = {name: data[name.split("_")[0]].to_numpy().astype(np.float32).reshape(len(keys), n_runs, n_vox)
              for name in PER_RUN}
    return keys, arrays
