"""KerasTuner search over CACTUS's lambda (standard weight) and eta (AWP radius), with
certified-accuracy objectives.

```python
from cactus_keras.tuning import CactusHyperModel, make_tuner, summarize

hypermodel = CactusHyperModel(lambda: cactus_keras.models.cnn3((28, 28, 1), 10),
                              epsilon=0.1, targets="prune:0.7,quantize:8", epochs=6)
tuner = make_tuner(hypermodel, "random", objective="mean", max_trials=12,
                   directory="runs/tune")
tuner.search(x_train, y_train, validation_data=(x_val, y_val), batch_size=128)
summarize(tuner, "runs/tune/report")     # tuning_summary.json, pareto.json, pareto.png
```

Importing this package does not import keras_tuner; the names below load it when
first used.
"""

from cactus_keras.lazy_exports import lazy_exports

_EXPORTS = {
    "CactusHyperModel": "cactus_keras.tuning.hypermodel",
    "DEFAULT_STANDARD_WEIGHT": "cactus_keras.tuning.hypermodel",
    "DEFAULT_AWP_RADIUS": "cactus_keras.tuning.hypermodel",
    "DEFAULT_LEARNING_RATE": "cactus_keras.tuning.hypermodel",
    "SEARCH_LEARNING_RATE": "cactus_keras.tuning.hypermodel",
    "SEARCH_RATIO_LOW": "cactus_keras.tuning.hypermodel",
    "SEARCH_RATIO_HIGH": "cactus_keras.tuning.hypermodel",
    "CompressedCertification": "cactus_keras.tuning.objectives",
    "CompressionTarget": "cactus_keras.tuning.objectives",
    "parse_targets": "cactus_keras.tuning.objectives",
    "resolve_objective": "cactus_keras.tuning.objectives",
    "check_objective_name": "cactus_keras.tuning.objectives",
    "OBJECTIVES": "cactus_keras.tuning.objectives",
    "CERTIFIED": "cactus_keras.tuning.objectives",
    "COMPRESSED": "cactus_keras.tuning.objectives",
    "MEAN": "cactus_keras.tuning.objectives",
    "CLEAN": "cactus_keras.tuning.objectives",
    "make_tuner": "cactus_keras.tuning.search",
    "summarize": "cactus_keras.tuning.search",
    "TUNERS": "cactus_keras.tuning.search",
    "pareto_front": "cactus_keras.tuning.pareto",
    "pareto_report": "cactus_keras.tuning.pareto",
    "plot_pareto": "cactus_keras.tuning.pareto",
    "trial_records": "cactus_keras.tuning.pareto",
}

# The documented names; the objective checks and the pieces of `summarize` (trial_records,
# pareto_report, plot_pareto) stay importable.
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS, hidden={
    "check_objective_name", "resolve_objective", "trial_records", "pareto_report",
    "plot_pareto"})
