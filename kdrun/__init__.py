"""kdrun: knowledge-distillation experiments with held-out evaluation."""

__version__ = "0.1.0"
