"""The options of every built-in model, one module per family: dataclasses that Hydra validates configs against.

They import nothing but gentrain's config helpers, so that composing a config (`gentrain --help`, `--cfg job`, a
misspelt key) never imports torch. Each config class names its model (@model_config in gentrain/registry.py);
the model itself, in gentrain/models/, attaches to it with `class VAE(GenerativeModel, config=VAEConfig)`.
"""
