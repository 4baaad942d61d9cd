"""Who may call the HTTP API: bearer tokens with a scope, stored as a keyed hash only."""
