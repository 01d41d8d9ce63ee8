"""Erasure requests (SPEC §11): due dates, the stored request, its execution through the
purge engine, its status moves and its certificate."""
