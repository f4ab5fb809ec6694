"""The boundary to TensorFlow Model Optimization (TF-MOT).

TF-MOT works on Keras 2 (`tf_keras`) models only, and importing it switches `tf.keras`
to Keras 2 for the whole process, so it is imported here alone, lazily, when a saved
TF-MOT object must be rebuilt.
"""

from __future__ import annotations

_MODULE = "tensorflow_model_optimization"


def is_tfmot_schedule(schedule):
    return type(schedule).__module__.startswith(_MODULE)


def schedule_to_config(schedule):
    """A JSON-able description of a TF-MOT pruning schedule."""
    config = schedule.get_config()
    return {"tfmot_schedule": config["class_name"], "config": config["config"]}


def schedule_from_config(config):
    import tensorflow_model_optimization as tfmot

    cls = getattr(tfmot.sparsity.keras, config["tfmot_schedule"], None)
    if cls is None:
        raise ValueError(
            f"Unknown TF-MOT pruning schedule {config['tfmot_schedule']!r} in a saved "
            "model; expected a class of tfmot.sparsity.keras."
        )
    return cls(**config["config"])
