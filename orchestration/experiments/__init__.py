"""Runs into a work directory: the shared run, plain training, distillation, VAE training,
their callbacks and the memory estimate."""
