"""Certify a saved Keras model (a plain network or a CactusModel) with IBP and CROWN,
and attack it with PGD: every certified sample must resist the attack.

    python examples/certify_saved_model.py --model runs/example/model.keras --limit 1000
"""

import _common

args_parser = _common.parser(__doc__.splitlines()[0])
args_parser.add_argument("--model", required=True, help="a .keras file")
args = args_parser.parse_args()

import keras  # noqa: E402

import cactus_keras  # noqa: E402

_, _, x_test, y_test, _ = _common.load(args)
model = keras.saving.load_model(args.model)
attack = cactus_keras.attacks.pgd(model, x_test, y_test, args.epsilon, steps=20, verbose=0)
print(f"PGD accuracy {1 - attack.attacked.mean():.4f}")
for bound in ("ibp", "crown-ibp"):
    result = cactus_keras.certify(model, x_test, y_test, epsilon=args.epsilon, bound=bound,
                                  verbose=0)
    broken = int((result.certified & attack.attacked).sum())
    print(f"{bound:<9} certified accuracy {result.certified_accuracy:.4f}; "
          f"certified samples broken by PGD: {broken}")
    assert broken == 0, "a certificate was contradicted by an attack"
