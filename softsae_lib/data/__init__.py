"""Data sources: synthetic data with ground truth (and, later, captured activations)."""
