"""routerllm: run very large open models on 2-3 GPUs, plan before loading, and benchmark them."""

__version__ = "0.1.0"
