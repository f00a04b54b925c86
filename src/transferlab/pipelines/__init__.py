"""Pipelines: turn a validated configuration into a finished run folder.

`probe` (frozen features + a classical head), `finetune` (staged unfreezing), `lr_find`
(learning-rate range test). Every pipeline ends through `tail.finish_run`, so every run kind
gets the same metrics, model card, report and status. Submodules are imported explicitly.
"""
