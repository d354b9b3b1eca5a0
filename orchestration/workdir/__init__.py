"""Work-directory files: the config guard and lock, atomic writes, evaluation records,
PHAST schedule files and frozen components."""
