"""HTTP layer: thin routes over the services (no torch, no SQL text), the rendering of every error
as the one JSON body (errors.py), middleware, and the HTTP request metrics (request_metrics.py)."""
