"""Training: the trainer, checkpoints (atomic, exactly resumable), DDP and logging."""

from .checkpoint import LoadedModel, atomic_save, load_checkpoint, make_checkpoint, model_from_checkpoint

__all__ = ["LoadedModel", "atomic_save", "load_checkpoint", "make_checkpoint", "model_from_checkpoint"]
