"""The retention coordinator: policies, planning, purge, holds, outbox relay, tracking."""
