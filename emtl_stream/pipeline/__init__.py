"""Pure numpy stages between samples and feature vectors, driven by explicit calls (no threads)."""
