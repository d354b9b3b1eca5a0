"""Foreign weights: a diffusers Stable Diffusion folder imported as a work directory."""
