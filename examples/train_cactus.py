"""Train a CactusModel with `fit`, its ramps as Keras callbacks, and save it.

    python examples/train_cactus.py --epochs 10 --output runs/example/model.keras
"""

import _common

args_parser = _common.parser(__doc__.splitlines()[0])
args_parser.add_argument("--epochs", type=int, default=10, help="training epochs (default: 10)")
args_parser.add_argument("--output", default="runs/example/model.keras",
                         help="where the trained CactusModel is saved (a .keras file)")
args = args_parser.parse_args()

import os  # noqa: E402

import cactus_keras  # noqa: E402

x_train, y_train, x_test, y_test, num_classes = _common.load(args)
net = cactus_keras.models.cnn3(input_shape=x_train.shape[1:], num_classes=num_classes)
model = cactus_keras.CactusModel(net, epsilon=args.epsilon, compression=[
    cactus_keras.Pruning(ratio=(0.5, 0.95), pruning_method="global_l1", name="pruned_l1"),
    cactus_keras.Pruning(ratio=(0.3, 0.7), pruning_method="global_l2_structured",
                         name="pruned_l2")],
    member_weight=0.5)
model.compile(optimizer="adam")
ramp = max(1, args.epochs // 2)
model.fit(x_train, y_train, batch_size=128, epochs=args.epochs, verbose=2, callbacks=[
    cactus_keras.EpsilonRamp(ramp, start_epoch=1),         # epsilon from 0 to its target
    cactus_keras.MemberWeightRamp(ramp, start_epoch=1),    # members brought in with it
])
os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
model.save(args.output)
result = cactus_keras.certify(model, x_test, y_test, epsilon=args.epsilon, verbose=0)
print(f"saved {args.output}; certified accuracy {result.certified_accuracy:.4f} "
      f"(clean {result.clean_accuracy:.4f}) on {len(x_test)} test images")
