"""Image folders: scanning, robust decoding, splits and data checks."""
