"""`make demo` (`python -m demo`): the whole system on demo data; see demo/__main__.py."""
