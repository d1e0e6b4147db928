"""The files of a comparison folder (:data:`.schema.COMPARE_SCHEMA`), written into ``<folder>.partial`` and
checked before the folder is renamed into place.

Layout::

    manifest.json                   what was compared, how (test, lags, level, FDR), on which subjects
    voxels.parquet                  per (subject, voxel): r of A and B, Δr, SE, interval, p, BH q, significant
    parcels.parquet                 per (subject, parcel; the whole brain first): the parcel mean's test, Holm and BH
    maps/delta_r.nii.gz             Δr (the group's with several subjects)
    maps/significant_delta_r.nii.gz Δr where BH q <= fdr, 0 elsewhere
    maps/mask.nii.gz
    delta_r.png                     the significant differences on the MNI template
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
from mtbench_plugins.analyses.figures import mni_template

from mtbench.errors import MtbenchError
from mtbench.results import volume_image, write_parquet

from .schema import validate_comparison

GROUP = "group"


def _voxel_rows(subject: str, values: dict, labels: np.ndarray, fdr: float) -> dict:
    n = labels.size
    return {"subject": [subject] * n, "voxel": np.arange(n, dtype=np.int32), "parcel_id": labels.astype(np.int32),
            **{k: np.asarray(values[k], dtype=np.float32) for k in ("r_a", "r_b", "delta", "se", "ci_low", "ci_high",
                                                                     "p_value", "q_value")},
            "significant": (np.asarray(values["q_value"]) <= fdr).astype(np.int8)}


def _parcel_rows(subject: str, rows: list[dict], significant: np.ndarray, labels: np.ndarray) -> list[dict]:
    out = []
    for row in rows:
        inside = significant if row["parcel_id"] == -1 else significant[labels == row["parcel_id"]]
        out.append({"subject": subject, **row, "share_significant": float(inside.mean()) if inside.size else np.nan})
    return out


def write_comparison(folder: Path, meta: dict, comparisons: list, group: tuple, labels: np.ndarray, mask_img,
                     fdr: float) -> Path:
    """Write every file of the comparison into ``folder.partial``, validate it, rename it to ``folder``."""
    import nibabel as nib

    folder = Path(folder)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "maps").mkdir(parents=True)
    try:
        voxel_tables, parcel_rows = [], []
        primary = None
        for c in comparisons:
            values = {k: getattr(c.result, k) for k in ("r_a", "r_b", "delta", "se", "ci_low", "ci_high", "p_value",
                                                         "q_value")}
            voxel_tables.append(_voxel_rows(c.subject, values, labels, fdr))
            parcel_rows += _parcel_rows(c.subject, c.result.parcels, values["q_value"] <= fdr, labels)
            primary = values
        group_voxels, group_parcels = group
        if group_voxels is not None:
            voxel_tables.append(_voxel_rows(GROUP, group_voxels, labels, fdr))
            parcel_rows += _parcel_rows(GROUP, group_parcels, group_voxels["q_value"] <= fdr, labels)
            primary = group_voxels
        meta = dict(meta)
        whole = parcel_rows[-len(comparisons[0].result.parcels)]  # the primary subject's whole-brain row
        meta["whole_brain"] = {k: whole[k] for k in ("subject", "delta", "ci_low", "ci_high", "p_value",
                                                     "share_significant")}
        columns = {k: np.concatenate([np.asarray(t[k]) for t in voxel_tables]) for k in voxel_tables[0]}
        write_parquet(partial / "voxels.parquet", columns, meta)
        write_parquet(partial / "parcels.parquet", {k: [r[k] for r in parcel_rows] for k in parcel_rows[0]}, meta)

        mask = np.asarray(mask_img.dataobj) > 0
        delta = np.nan_to_num(np.asarray(primary["delta"], dtype=np.float32))
        significant = np.where(np.asarray(primary["q_value"]) <= fdr, delta, 0).astype(np.float32)
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), mask_img.affine), partial / "maps" / "mask.nii.gz")
        nib.save(volume_image(delta, mask, mask_img.affine), partial / "maps" / "delta_r.nii.gz")
        nib.save(volume_image(significant, mask, mask_img.affine), partial / "maps" / "significant_delta_r.nii.gz")
        _figure(partial, meta, delta, significant, mask, mask_img.affine, fdr)
        (partial / "manifest.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=float))
        validate_comparison(partial)  # on write: a folder that does not pass is never renamed into place
        partial.rename(folder)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise MtbenchError(f"cannot write the comparison to {folder} ({exc.strerror or exc}); free space or give "
                           "another --out") from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return folder


def _figure(folder: Path, meta: dict, delta, significant, mask, affine, fdr: float) -> None:
    """``delta_r.png``: significant Δr (or all Δr, said in the title, when none is significant) on MNI152."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nilearn import plotting

    shown = significant if np.any(significant) else delta
    what = f"significant at BH q <= {fdr}" if np.any(significant) else "none significant: all voxels shown"
    peak = float(np.max(np.abs(shown))) or 1e-3
    fig = plt.figure(figsize=(10, 3.4))
    whole = meta["whole_brain"]
    title = (f"Δr = {meta['a']['fit']} − {meta['b']['fit']} ({what}); whole brain {whole['delta']:+.4f} "
             f"[{whole['ci_low']:+.4f}, {whole['ci_high']:+.4f}], p = {whole['p_value']:.2g}")
    with warnings.catch_warnings():  # an all-zero map (two identical fits) is drawn empty, not warned about
        warnings.simplefilter("ignore", UserWarning)
        plotting.plot_stat_map(volume_image(shown, mask, affine), bg_img=mni_template(), figure=fig,
                               display_mode="z", cut_coords=6, vmax=peak, cmap="RdBu_r", colorbar=True,
                               black_bg=False, resampling_interpolation="nearest", draw_cross=False)
    fig.suptitle(title, fontsize=9)
    fig.savefig(folder / "delta_r.png", dpi=90)
    plt.close(fig)
