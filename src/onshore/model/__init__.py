"""The cross-embodiment policy / world model (PyTorch): network, task text, files, acting."""
