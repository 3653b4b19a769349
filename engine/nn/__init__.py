"""The networks: the hash-grid encoding and its backends (torch, Triton, tiny-cuda-nn), the SDF,
colour and background networks, and mixed precision."""
