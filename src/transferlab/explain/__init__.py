"""What a model looks at: class-activation maps on its own target layer."""
