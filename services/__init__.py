"""Example downstream services, built only on `consumer_sdk`."""
