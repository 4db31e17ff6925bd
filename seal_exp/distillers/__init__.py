"""Distillation methods, one module each: a `Distiller` returning `(logits, {term: loss})`."""
