import torch

# Small numpy/torch ops only; one thread keeps the suite fast and reproducible on shared cores.
torch.set_num_threads(1)
