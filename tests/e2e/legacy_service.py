"""A test-only service on the public SDK that deletes users but has no verify handler, as
a service written before verification existed: it answers verify events `unsupported`.

Run as `python -m tests.e2e.legacy_service`, with the same environment as the product
services. It keeps no data, so every user it is asked to delete is `not_found`.
"""

from __future__ import annotations

from consumer_sdk import EntityNotFound, RetentionConsumer, RetentionEvent, configure_logging

SERVICE = "legacy"


def create_app() -> RetentionConsumer:
    app = RetentionConsumer(SERVICE)

    @app.on_delete("user")
    async def delete_user(event: RetentionEvent) -> int:
        raise EntityNotFound("legacy keeps no users")

    return app


if __name__ == "__main__":
    configure_logging()
    create_app().run()
