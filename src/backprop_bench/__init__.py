"""backprop-bench: the same MLP in NumPy, PyTorch, TensorFlow and Keras, compared honestly."""

__version__ = "0.1.0"
