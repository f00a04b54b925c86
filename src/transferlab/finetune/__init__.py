"""Fine-tuning: backbone + configurable head, staged unfreezing, augmentation, exact resume."""
