"""Example downstream services, built only on `consumer_sdk` (run: `python -m services.<name>`)."""
