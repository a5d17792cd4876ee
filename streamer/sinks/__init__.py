"""Where verdicts go: stdout JSON lines now; Kafka and the API ring arrive with the service."""
