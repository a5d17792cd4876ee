"""The asyncio service of deepfake-monitor: sources, per-stream state, batching, sinks, API."""

__version__ = "0.1.0"
