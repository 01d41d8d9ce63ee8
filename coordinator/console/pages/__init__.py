"""One module per console page family; each has a `router` under `/ui`."""
