"""transferlab: transfer learning for image classification on an ordinary CPU."""

__version__ = "0.1.0"
