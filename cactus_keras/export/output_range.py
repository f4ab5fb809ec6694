"""`certified_output_range`: the int8 file's output range chosen for its certificate.

TFLite's calibration gives the output tensor (the logits) its min/max range over the
representative data. That range is wide (e.g. [-52, 16] for a Fashion-MNIST cnn3), so
one output code is coarse (0.27 logits there), and each certificate pays about one
code of rounding per compared logit. Only the top of the range decides a prediction:
logits clamped at the bottom code lose nothing while the others stay apart. A narrower
output range chosen by the file's own certificate on labelled training data certifies
more of the test set (measured: results/experiments/fashion_mnist_int8/README.md).

The choice is the `Int8FileQuantization` member's (`select_output_range`): a network
trained with the member keeps its trained ranges and gets its output range chosen; a
network trained without it gets the member's ranges from calibration data first (as
the converter would), then the choice. `to_tflite` writes what the member holds.
"""

from __future__ import annotations

import numpy as np

from cactus_keras.compression.int8_file import int8_file_member
from cactus_keras.int8.rounding import DEFAULT_ROUNDING


def certified_output_range(model_or_network, x, y, epsilon, calibration_data=None, *,
                           input_range=(0.0, 1.0), rounding=DEFAULT_ROUNDING):
    """A `CactusModel` whose `Int8FileQuantization` member holds the output range under
    which the int8 file certifies most of `(x, y)` (labelled training or validation
    data, never the test set); export it with `to_tflite`. Returns
    `(model, {candidate (low, high) factors: certified fraction of (x, y)})`.

    A `CactusModel` with one such member keeps its trained ranges (the member
    `to_tflite` exports by default). Anything else (a Keras network, or a `CactusModel`
    without the member or with several: its `.network`) is wrapped in a
    `CactusModel` with one member of `rounding`, its ranges set from
    `calibration_data` (required then) as the converter's calibration sets them.

    Example:

    ```python
    from cactus_keras.export import certified_output_range, to_tflite

    model, scores = certified_output_range(net, x_train[:64], y_train[:64], 0.01,
                                           calibration_data=x_train[:64])
    to_tflite(model, "model.tflite", x_train[:64])
    print(model.compression[0].output_range, max(scores.values()))
    ```
    """
    from cactus_keras.compression import Int8FileQuantization
    from cactus_keras.training.model import CactusModel

    member = int8_file_member(model_or_network)
    if member is not None:
        model = model_or_network
    else:
        if calibration_data is None:
            raise ValueError("`calibration_data` is required for a network trained without "
                             "the int8_file member: its activation ranges come from it.")
        network = getattr(model_or_network, "network", model_or_network)
        member = Int8FileQuantization(rounding=rounding)
        model = CactusModel(network, epsilon, compression=[member], input_range=input_range,
                            include_full_network=False)
        member.calibrate_ranges(model, np.asarray(calibration_data, np.float32))
    scores = member.select_output_range(model, x, y, epsilon, input_range)
    return model, scores
