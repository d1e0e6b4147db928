"""Built-in sweep executors: a local process pool and Slurm through submitit."""
