"""Interoperation with TensorFlow Model Optimization (TF-MOT): `tf_keras` twins of Keras 3
networks (`tf_keras_twins`) and TF-MOT's pruning and quantization-aware training as
baselines and independent compressors (`tfmot`). TF-MOT itself is imported lazily,
inside the functions that need it."""
