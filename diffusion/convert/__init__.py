"""Converters from foreign checkpoint formats (diffusers, transformers) into Flax params.

They read tensors with ``safetensors``' numpy API (a torch ``.bin`` only with
``weights_only=True``), know the Flax modules of ``diffusion/nn`` and nothing else: no
train state, no work directory (``launch/import_weights.py`` wires those).
"""
