"""A finished run's model, loaded for inference: predictors (probe and fine-tuned), the run as
one torch network (CAM, export), and export to ONNX / TorchScript.

Loading a run to predict imports neither Lightning nor matplotlib. Submodules are imported
explicitly.
"""
