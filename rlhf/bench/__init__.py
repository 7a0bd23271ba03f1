"""Benchmark harness (``python -m rlhf.bench``): workloads in conf/bench/, FLOPs and MFU in flops.py."""
