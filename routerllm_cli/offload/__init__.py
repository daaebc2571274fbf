"""Offload: the folder that holds disk-offloaded weights (lock, clean) and the fast offload engine."""
