"""The pieces of the torch engine (:mod:`mtbench.encoding.eigen`): a training set's eigenbasis, reusable
scratch memory, the voxels a shared alpha is nominated on, and the memory helpers."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import limits

f32, f64 = torch.float32, torch.float64


@dataclass
class Fold:
    """Eigenbasis of one training set and what every alpha's predictions need.

    ``s`` (m,) float64 eigenvalues (>= 0). ``proj`` (float32) turns a block of targets
    into the coefficients ``Z`` (m, n_block): kernel form, ``proj = U`` (n_train, m) and
    ``Z = U^T Y_T``; feature form, ``proj = E`` (n_features, m) and ``Z = E^T X_T^T Y_T``.
    ``B[v]`` (n_v, m) maps coefficients scaled by ``1 / (s + alpha)`` to predictions of
    run ``v``.
    """

    train: list[int]
    kernel: bool
    s: np.ndarray
    proj: Any
    B: dict


@dataclass
class PairInputs:
    """What the per-voxel validation of one pair fold needs for every block (see ``pair_inputs``)."""

    num: dict  # validated run -> centered B (n_v, m) float32, for the Pearson numerators
    stack: Any  # (rows, m) float32: same column Gram as the centered B of every validated run
    edges: np.ndarray  # row offsets of each validated run in ``stack``
    w: Any  # (n_alphas, m) float32: w~_a
    scale: Any  # (m, n_alphas) float32: w~_a (float32) or the increments between sorted alphas
    train_idx: Any  # kernel form: rows of the training runs
    rows_are_scans: bool = False  # ``stack`` holds the centered B themselves: its products are the predictions


class Workspace:
    """Scratch tensors reused from block to block.

    The large temporaries of the block loop (tens of MB, thousands of them per fit) are written
    into the same memory instead of being freed and allocated again: with glibc's malloc the
    freed blocks fragment the heap (+270 MB peak resident memory measured at LPP scale).
    """

    def __init__(self, device) -> None:
        self.device = device
        self.buffers: dict[str, Any] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype) -> Any:
        """A contiguous tensor of ``shape`` (contents undefined), backed by buffer ``name``."""
        numel = int(np.prod(shape))
        buffer = self.buffers.get(name)
        if buffer is None or buffer.dtype != dtype or buffer.numel() < numel:
            buffer = self.buffers[name] = torch.empty(numel, dtype=dtype, device=self.device)
        return buffer[:numel].view(shape)


def release_freed_memory() -> None:
    """Return the C heap's free pages to the system (glibc ``malloc_trim``; elsewhere nothing).

    Tensors below glibc's mmap threshold (which rises to 32 MB as large blocks are freed) live
    on the heap, and what a phase frees stays resident, fragmented, while the next phase
    allocates anew: the peak is then the sum of the phases instead of the largest one. Called
    between phases and before each refit block (up to ~20 ms on a fragmented 200 MB heap).
    """
    trim = malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS, Windows)."""

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def tensor_bytes(t) -> int:
    return t.numel() * t.element_size()


def fold_bytes(f: Fold) -> int:
    """Bytes of a fold's eigenbasis and inputs."""
    return tensor_bytes(f.proj) + sum(tensor_bytes(b) for b in f.B.values())


def nomination_voxels(n_voxels: int) -> np.ndarray | None:
    """Evenly spaced voxels on which a shared alpha's candidates are swept first (None: too few voxels to gain)."""
    if n_voxels < 4 * limits.NOMINATION_VOXELS:
        return None
    return np.linspace(0, n_voxels - 1, limits.NOMINATION_VOXELS).round().astype(np.int64)


def nominated_alphas(r_subset: np.ndarray, n_voxels: int) -> np.ndarray:
    """Alphas that may still hold the best voxel-mean validation r, (n_runs, n_alphas) bool.

    Parameters
    ----------
    r_subset : ndarray, shape (n_runs, n_alphas, n_subset)
        Validation r of the subset's voxels, per outer fold and alpha.
    n_voxels : int
        Voxels in the whole fit (finite-population correction of the standard errors).

    The leader is the alpha of the best subset mean; an alpha is kept when its mean trails the
    leader's by at most limits.NOMINATION_Z standard errors of the per-voxel paired difference (zero
    for an alpha identical to the leader, or where the subset is every voxel).
    """
    n = r_subset.shape[2]
    means = r_subset.mean(2)  # (n_runs, n_alphas)
    leader = means.argmax(1)
    diff = r_subset[np.arange(len(leader)), leader][:, None, :] - r_subset  # (n_runs, n_alphas, n)
    std_error = diff.std(2, ddof=1) / np.sqrt(n) * np.sqrt(max(0.0, 1 - n / n_voxels))
    return diff.mean(2) <= limits.NOMINATION_Z * std_error + 1e-12


def concatenated_rows(arrays: list[np.ndarray]) -> np.ndarray:
    """``np.concatenate(arrays)``, without a copy when they are consecutive row blocks of one buffer.

    Callers that hold all runs in one C-contiguous (n_scans, n_columns) array and pass its row
    slices save a copy of the whole data (the BOLD: 290 MB at LPP scale).
    """
    first = arrays[0]
    owner = first.base
    row_bytes = first.strides[0] if first.ndim == 2 else 0
    address = first.__array_interface__["data"][0]
    if owner is not None and row_bytes > 0 and first.flags.writeable:
        rows = 0
        for a in arrays:
            if a.base is not owner or not a.flags.c_contiguous or a.dtype != first.dtype or \
                    a.shape[1:] != first.shape[1:] or a.__array_interface__["data"][0] != address + rows * row_bytes:
                break
            rows += a.shape[0]
        else:  # one contiguous stretch of the owner's memory: a view of it
            return np.lib.stride_tricks.as_strided(first, shape=(rows, first.shape[1]), strides=first.strides)
    return np.concatenate(arrays)
