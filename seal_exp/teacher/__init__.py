"""The ANN teacher in one place: its cache, its training and its cached logits."""
