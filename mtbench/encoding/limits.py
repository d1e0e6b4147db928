"""Sizes that bound the engine's memory and set its block shapes (tests shrink them to exercise every path)."""

# Eigendecompositions up to this size run in float64 (cheap there, and exact enough that
# float32 only enters the large products); larger ones in float32 (float64 eigh of a
# 2,000 x 2,000 matrix costs seconds per fold on 2 cores).
FLOAT64_EIGH_MAX = 1024
# Voxels per block: the validation product of one pair fold, (rows x n_alphas*block) float32,
# stays under BLOCK_BYTES (cache-sized, and small beside the data), at most MAX_BLOCK voxels,
# and is a multiple of MIN_BLOCK: the products' output width is the block, and widths that are
# not a multiple of 8 run markedly slower (measured in docs/encoding.md).
BLOCK_BYTES = 8 * 2**20
MAX_BLOCK = 512
MIN_BLOCK = 64
# Voxels per chunk: its per-run X'Y products and refit temporaries stay under this many bytes.
CHUNK_BYTES = 64 * 2**20
# Bytes of pair-fold eigenbases and inputs held at once (see :meth:`mtbench.encoding.eigen.EigenRidge.pair_groups`).
GROUP_BYTES = 128 * 2**20
# Shared alpha: candidates are swept first on this many evenly spaced voxels (fits of at least
# 4 times as many), and kept when within NOMINATION_Z standard errors of the leader.
NOMINATION_VOXELS = 2048
NOMINATION_Z = 6.0
# Below this many floating-point operations a fit runs on one thread.
SMALL_FLOPS = 1e9
# Per-alpha test maps of the refit (:meth:`mtbench.encoding.eigen.EigenRidge.make_test_maps`) are
# made when all of them fit in this many bytes; otherwise the refit goes through the coefficients.
TEST_MAP_BYTES = 32 * 2**20
