"""Real infrastructure (Kafka, ...) that the project starts itself for development and tests."""
