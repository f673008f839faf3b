"""ONNX example model ``ct-nodule-example``: a demonstration of the ``onnx`` runtime.

See ``README.md`` beside this file for the method, the numbers and the limits. Not for
diagnosis: it has only ever seen the project's synthetic phantom.
"""
