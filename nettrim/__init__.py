"""Net-Trim: prune trained PyTorch models by convex optimization."""

__all__ = []
