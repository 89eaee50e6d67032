"""Datasets as uint8 image tensors (N, C, H, W) with labels, split into train / val / test.

Adding a dataset: its options in schemas.py (a dataclass decorated with @dataset_config("<name>"), with a
`data_info()` saying what it will load), a loader `@loads(<its config>) def load(cfg, root) -> ImageDataset`
in `<name>.py`, and `configs/dataset/<name>.yaml`. gentrain.composition.load_dataset finds the loader by the
config.
"""
