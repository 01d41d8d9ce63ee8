"""The transactional outbox: event rows as `RetentionEvent`s, the fast encoder, the Kafka
producer port, and the relay that publishes committed rows at least once."""
