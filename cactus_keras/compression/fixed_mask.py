"""`FixedMaskPruning`: one pruned member whose mask is fixed when the model is made."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from cactus_keras.compression.masks import (
    check_pruning_method,
    check_ratio,
    magnitude_masks,
    output_is_excluded,
)
from cactus_keras import vocabulary
from cactus_keras.compression.member import CompressionMember, register_member


@register_member(vocabulary.FIXED_MASK_PRUNING)
class FixedMaskPruning(CompressionMember):
    """The network pruned once by magnitude at `ratio`, with the mask kept fixed.

    The mask is computed from the weights when the model is built (it is saved with the
    model) and never changes; pruned weights receive no gradient (`kernel * mask`).
    With `CactusModel(..., include_full_network=False)` this is certified fine-tuning
    of a pruned network (the `ibp-then-finetune` baseline).

    Args:
        ratio: fraction of the prunable weights removed, in [0, 1).
        pruning_method: "global_l1", "local_l1" or "global_l2_structured".
        exclude_output: as `Pruning`.
        name: as `Pruning`.

    Example:

    ```python
    model = cactus_keras.CactusModel(net, epsilon=0.1, include_full_network=False,
                                     compression=[cactus_keras.FixedMaskPruning(0.7)])
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    model.fit(x_train, y_train, epochs=2)
    pruned = model.apply_compression()
    ```
    """

    def __init__(self, ratio, pruning_method="global_l1", exclude_output=False, name="pruned"):
        super().__init__(exclude_output=exclude_output, name=name)
        self.ratio = check_ratio(ratio)
        self.pruning_method = check_pruning_method(pruning_method)

    @property
    def excludes_output(self):
        return output_is_excluded(self.pruning_method, self.exclude_output)

    def build(self, kernels, add_variable):
        masks = magnitude_masks([k.value for k in kernels], self.ratio, self.pruning_method)
        return [
            add_variable(k.shape, keras.initializers.Constant(np.asarray(ops.convert_to_numpy(m))),
                         f"fixed_mask_{i}")
            for i, (k, m) in enumerate(zip(kernels, masks))
        ]

    def compress(self, kernels, context):
        return [k * ops.stop_gradient(m.value) for k, m in zip(kernels, context.state)]
