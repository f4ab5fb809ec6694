"""The int8 arithmetic of a TFLite file, independent of TensorFlow and of the file format.

`fixed_point` holds TFLite's fixed-point requantization bit for bit (NumPy, int64);
`rounding` the rounding models a certificate of the file may assume (their error
bounds and the runtimes each is sound for, and the default). They sit in the bottom
layer of the package so that export/ (the verifier, the file reader) and compression/
(the int8 file member) describe one arithmetic.
"""
