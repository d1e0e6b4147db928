"""Le Petit Prince fMRI corpus (OpenNeuro ds003643): fetch, prepare, load and simulate."""
