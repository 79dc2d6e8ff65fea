"""The engine: batches fed from the cache to the device, and a train / evaluate loop that knows nothing about
the model."""
from .feed import BatchFeeder, epoch_seed
from .loop import NonFiniteError, autocast_context, predict_logits, resolve_device, train_one_epoch
from .threads import TrainingSlot, apply_threads, thread_count

__all__ = ["BatchFeeder", "NonFiniteError", "TrainingSlot", "apply_threads", "autocast_context", "epoch_seed",
           "predict_logits", "resolve_device", "thread_count", "train_one_epoch"]
