"""The coordinator's one Kafka boundary: what it asks of Kafka, as typed protocols in
seconds (`ports`), aiokafka behind them (`clients`, `admin`), and an in-memory stand-in
beside each (`memory`) so the tracker and topic administration run in tests without a
broker. The relay's batch producer port is `coordinator.kafka.producer`."""
