"""Export a trained model to a full-integer int8 `.tflite` file and certify the file on
its own integer arithmetic.

    python examples/export_and_verify_int8.py --model runs/example/model.keras \
        --output runs/example/model_int8.tflite --limit 1000
"""

import _common

args_parser = _common.parser(__doc__.splitlines()[0])
args_parser.add_argument("--model", required=True, help="a .keras file")
args_parser.add_argument("--output", required=True, help="the .tflite file to write")
args = args_parser.parse_args()

import keras  # noqa: E402

import cactus_keras  # noqa: E402

x_train, _, x_test, y_test, _ = _common.load(args)
model = keras.saving.load_model(args.model)
cactus_keras.export.to_tflite(model, args.output, representative_data=x_train[:200])
file_result = cactus_keras.export.verify_tflite(args.output, x_test, y_test, args.epsilon,
                                                verbose=0)
float_result = cactus_keras.certify(model, x_test, y_test, epsilon=args.epsilon, verbose=0)
print(f"float network certified {float_result.certified_accuracy:.4f}; "
      f"int8 file certified {file_result.certified_accuracy:.4f} "
      f"(clean {file_result.clean_accuracy:.4f})")
