"""Launch helpers: a Ray cluster across the nodes of a submitit/Slurm job, and per-sweep-point isolation."""
