"""Certificate-constrained compression: the smallest (or fastest) int8 file of a
network whose own integer certificate stays above a floor.

`measure_latency` and `file_size` measure a `.tflite` file.
"""

from cactus_keras.compress.latency import file_size, measure_latency
