"""A test-only fourth service on the public SDK whose `session` handler always raises.

Run as `python -m tests.e2e.crm_service`, with the same environment as the product
services. It keeps no database: an event it cannot handle leaves nothing to record.
The product services carry no test hooks; this module is how a test gets a handler
that never succeeds.
"""

from __future__ import annotations

from consumer_sdk import RetentionConsumer, RetentionEvent, configure_logging

SERVICE = "crm"
ENTITY_TYPE = "session"
ERROR = "crm API answered 503"


def create_app() -> RetentionConsumer:
    app = RetentionConsumer(SERVICE)

    @app.on_delete(ENTITY_TYPE)
    async def delete_session(event: RetentionEvent) -> int:
        raise ConnectionError(ERROR)

    return app


if __name__ == "__main__":
    configure_logging()
    create_app().run()
