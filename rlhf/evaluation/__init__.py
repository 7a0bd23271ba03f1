"""Evaluation of a policy on held-out prompts: metric math (metrics.py, pure), the driver shared by training
and `rlhf.eval` (driver.py), in-process generation from a saved model (generation.py) and prompt rows
(prompts.py)."""
