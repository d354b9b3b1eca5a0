"""Drawing samples (images, video plans, prompts), scoring them, sweeps, reports, evaluation and the PHAST search."""
