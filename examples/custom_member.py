"""Write a compression member of your own (power-of-two weights with a straight-through
estimator), train with it beside a pruning member, save and load the model.

    python examples/custom_member.py --epochs 4 --limit 5000
"""

import _common

args_parser = _common.parser(__doc__.splitlines()[0])
args_parser.add_argument("--epochs", type=int, default=4, help="training epochs (default: 4)")
args = args_parser.parse_args()

import os  # noqa: E402
import tempfile  # noqa: E402

import keras  # noqa: E402
from keras import ops  # noqa: E402

import cactus_keras  # noqa: E402


@cactus_keras.compression.register_member("power_of_two")
class PowerOfTwo(cactus_keras.compression.CompressionMember):
    """Rounds every weight to a signed power of two; the gradient passes straight
    through the rounding."""

    def compress(self, kernels, context):
        def nearest_power(w):
            return ops.sign(w) * 2.0 ** ops.round(ops.log2(ops.maximum(ops.abs(w), 1e-8)))

        return [w + ops.stop_gradient(nearest_power(w) - w) for w in kernels]


x_train, y_train, x_test, y_test, num_classes = _common.load(args)
net = cactus_keras.models.cnn3(input_shape=x_train.shape[1:], num_classes=num_classes)
model = cactus_keras.CactusModel(net, epsilon=args.epsilon, compression=[
    cactus_keras.Pruning(ratio=(0.25, 0.75)), PowerOfTwo(name="pow2")])
model.compile(optimizer="adam")
model.fit(x_train, y_train, batch_size=128, epochs=args.epochs, verbose=2,
          callbacks=[cactus_keras.EpsilonRamp(max(1, args.epochs // 2), start_epoch=1)])

path = os.path.join(tempfile.mkdtemp(), "model.keras")
model.save(path)
loaded = keras.saving.load_model(path)             # the member is registered: it loads
table = cactus_keras.evaluate_compressed(loaded, x_test, y_test, epsilon=args.epsilon,
                                         verbose=0)
print(table)
