"""A run's pieces from its config: networks, data, model caps, config validation, frozen
parts, and opening a work directory."""
