"""Numbers that judge a model: bits per dimension (bits.py) and the sample-quality metrics FID and KID
(sample_quality.py, set up by quality_setup.py, with feature extractors in features.py and classifier.py).

Only bits.py is imported here: the sample-quality modules pull in torchmetrics and torch-fidelity, which a
likelihood model's run does not need.
"""

from gentrain.metrics.bits import LN2, bits_per_dim, dequantized_nll_nats

__all__ = ["LN2", "bits_per_dim", "dequantized_nll_nats"]
