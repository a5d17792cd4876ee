"""Model side of deepfake-monitor: the classifier, faces, batched inference, offline workflow.

Nothing in this package uses asyncio, and only ``photos.fetch`` (run by ``make setup``)
reaches the network.
"""

__version__ = "0.1.0"
