"""The models. Each is its options (a dataclass in schemas/, decorated with @model_config("<name>"), torch-free so
that composing a config never imports torch) and its GenerativeModel subclass, attached to those options with
`class VAE(GenerativeModel, config=VAEConfig)`, plus `configs/model/<name>.yaml`. A model may also be one file
holding both (gentrain/registry.py finds it). gentrain.composition.build_model builds any of them from a config.
"""
