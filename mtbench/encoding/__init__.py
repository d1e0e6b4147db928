"""Voxelwise ridge encoding models scored by nested leave-one-run-out cross-validation.

For every outer fold one run is held out as the test run. On the remaining runs an inner
leave-one-run-out picks the ridge penalty (per voxel, or one shared by all voxels) that
maximizes the mean validation Pearson r; the model is then refit on all training runs
with the chosen penalties and predicts the test run. The test run never takes part in the
choice of alpha nor in any fit of its own outer fold (:mod:`.folds` says which runs each
fold trains and validates on).

- :mod:`.nested`: :func:`fit_nested_loro`, the entry point, and its input checks;
- :mod:`.eigen` (+ :mod:`.eigen_shared`, :mod:`.eigen_parts`): the torch engine
  (``backend="torch"``), which shares one eigendecomposition per training set across alphas
  and folds and never stores a validation prediction;
- :mod:`.himalaya_fit`: the same protocol with himalaya's ``KernelRidgeCV``
  (``backend="himalaya"``), kept as an independent cross-check (the tests compare the two);
- :mod:`.scores`, :mod:`.device`, :mod:`.limits`: results and scores, devices, memory bounds.

Inputs are expected z-scored per run (as :func:`mtbench.alignment.align_runs` and the
runner provide them): the ridge has no intercept. Why the engine is shaped as it is, what it
costs and how it compares with himalaya are in ``docs/encoding.md``.
"""

from .device import check_device, effective_precision, on_gpu
from .nested import fit_nested_loro
from .scores import EncodingResult, pearson_r

__all__ = ["EncodingResult", "check_device", "effective_precision", "fit_nested_loro", "on_gpu", "pearson_r"]
