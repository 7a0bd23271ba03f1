"""rlhf: RLHF experiments from a laptop CPU to a GPU cluster (Ray, DeepSpeed, vLLM, HF Transformers, Hydra, MLflow)."""

__version__ = "0.1.0"
