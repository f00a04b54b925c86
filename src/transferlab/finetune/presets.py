"""Named augmentation presets: plain data, importable without torch (the CLI's help lists them)."""

from __future__ import annotations

# Preset name -> augment list, the same data a recipe may write out itself.
AUGMENT_PRESETS: dict[str, list[dict]] = {
    "none": [],
    "light": [{"name": "flip"}, {"name": "crop", "scale": (0.8, 1.0)}],
    # The classic Keras ImageDataGenerator set compared in the scene study.
    "classic": [
        {"name": "rotation", "degrees": 15},
        {"name": "shift", "fraction": 0.1},
        {"name": "zoom", "scale": (0.9, 1.1)},
        {"name": "shear", "degrees": 8},
        {"name": "flip"},
    ],
    "randaugment": [{"name": "flip"}, {"name": "randaugment"}],
    "trivialaugment": [{"name": "flip"}, {"name": "trivialaugment"}],
}
