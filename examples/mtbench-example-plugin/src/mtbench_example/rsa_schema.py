"""What a ``--mode rsa`` run holds (its part of mtbench's result schema): data only, read at registration."""

from mtbench.schema import IDENTITY

#: The result schema of an ``rsa`` run (registered with the entry).
SCHEMA = {
    "manifest_keys": [],
    "files": ["maps/mask.nii.gz"],
    "parquet": {
        "rsa.parquet": IDENTITY | {"layer": "integer", "state": "string", "parcel_id": "integer", "parcel": "string",
                                   "n_voxels": "integer", "fold": "integer", "cka": "floating", "rsa": "floating"},
        "rsa_summary.parquet": IDENTITY | {"parcel_id": "integer", "parcel": "string", "n_voxels": "integer",
                                           "layer": "integer", "state": "string", "cka": "floating",
                                           "nested_cka": "floating", "rsa": "floating", "folds_agree": "floating"},
    },
}
