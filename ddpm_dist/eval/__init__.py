"""Evaluation: FID and Inception Score with a MindSpore port of pytorch-fid's Inception-v3; the likelihood bound.

- :mod:`.inception`  the network (FID variant of Inception-v3, TensorFlow 2015-12-05 graph)
- :mod:`.weights`    pytorch-fid weights file -> MindSpore checkpoint -> ready network
- :mod:`.metrics`    FID and IS from features, float64 numpy (no MindSpore)
- :mod:`.features`   features of uint8 images, sharded across ranks and gathered
- :mod:`.reference`  reference statistics from a data set or an npz, cached by protocol
- :mod:`.evaluate`   the whole evaluation, and its one-line summary
- :mod:`.likelihood` the negative log-likelihood bound of a data set in bits/dim (``--metric nll``), sharded

Importing this package does not import MindSpore.
"""

from ..errors import UserError

FEATURE_DIM = 2048  # pool3 features
NUM_LOGITS = 1008  # classifier outputs of the 2015-12-05 graph


class EvalError(UserError, ValueError):
    """Evaluation input that cannot be used (weights, reference, images, statistics). The message is one line."""
