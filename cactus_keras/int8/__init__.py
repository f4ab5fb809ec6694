"""The int8 arithmetic of a TFLite file, independent of TensorFlow and of the file format.

`fixed_point` holds TFLite's fixed-point requantization bit for bit (NumPy, int64). It
sits in the bottom layer of the package so that export/ (the verifier, the file
reader) and compression/ (the int8 training member) describe one arithmetic.
"""
