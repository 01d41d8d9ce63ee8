"""The policy engine: the policy file's model and loader, its binding to the live schema,
its JSON Schema, retention durations, anonymize strategies and the `conditions` grammar."""
