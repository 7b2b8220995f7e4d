"""Training on resident data at one site: data windows, the loop, distributed, checkpoints."""
