# Makes configs/ importable as the package gentrain.configs (see pyproject.toml), so Hydra finds
# these files through pkg://gentrain.configs from a checkout and after a non-editable install.
