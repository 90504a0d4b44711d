from ..torch_setup import seed_each_test  # noqa: F401  (one thread, autouse seed)
