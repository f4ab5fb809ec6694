"""Search lambda (the standard-loss weight) with KerasTuner for the best certified
accuracy of the network pruned to 70%.

    python examples/tune_lambda.py --trials 6 --epochs 4 --limit 3000
"""

import _common

args_parser = _common.parser(__doc__.splitlines()[0])
args_parser.add_argument("--trials", type=int, default=6, help="tuner trials (default: 6)")
args_parser.add_argument("--epochs", type=int, default=4, help="epochs per trial (default: 4)")
args_parser.add_argument("--directory", default="runs/example/tuning",
                         help="KerasTuner's project directory (resumed if it exists)")
args = args_parser.parse_args()

import cactus_keras  # noqa: E402
from cactus_keras import tuning  # noqa: E402

x_train, y_train, x_test, y_test, num_classes = _common.load(args)
hypermodel = tuning.CactusHyperModel(
    lambda: cactus_keras.models.cnn3(input_shape=x_train.shape[1:], num_classes=num_classes),
    epsilon=args.epsilon, targets="prune:0.7", epochs=args.epochs)
tuner = tuning.make_tuner(hypermodel, "random", "mean", max_trials=args.trials,
                          directory=args.directory)
tuner.search(x_train, y_train, validation_data=(x_test, y_test), verbose=0)
best = tuner.get_best_hyperparameters(1)[0]
print(f"best lambda {best.get('standard_weight'):.3f}")
summary = tuning.summarize(tuner, args.directory)   # tuning_summary.json, pareto.png, ...
print(f"{len(summary['trials'])} trials; summary and Pareto front in {args.directory}")
