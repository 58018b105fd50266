"""The reader: an OpenCLIP model behind one worker thread.

- ``model``: ``load_model()`` → a frozen ``LoadedModel`` (weights, tokenizer, transforms);
- ``text``: tokenising and the short-text path;
- ``backends``: torch, or ONNX Runtime on CPU, behind one small interface;
- ``worker``: ``ClipEncoder``, the queue, the micro-batches and the futures.
"""

from .model import LoadedModel, default_threads, load_model, model_identity, resolve_device
from .worker import BatchStats, ClipEncoder, Prepared, TextVector

__all__ = ["BatchStats", "ClipEncoder", "LoadedModel", "Prepared",
           "TextVector", "default_threads", "load_model", "model_identity", "resolve_device"]
