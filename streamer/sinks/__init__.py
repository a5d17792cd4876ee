"""Where verdicts go: stdout JSON lines and the ring the API reads (``stdout.py``), Kafka
(``kafka.py``); ``base.py`` is the interface and its acknowledgement callback."""
