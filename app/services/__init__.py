"""Use cases: each one validates, changes the store in ONE transaction that also writes its audit
event, and drives the engine. Routes call these; so does the training worker."""
