"""pytest-benchmark setup: single-threaded CPU timing (two threads on these 2-vCPU machines were
measured 80x slower on a small matmul)."""
import torch

torch.set_num_threads(1)
