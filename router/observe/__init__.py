"""Observability: what the router counts and shows.

- ``metrics``: the router's own Prometheus metrics per request (``GET /metrics``).
- ``cluster_metrics``: the workers' and store nodes' own reports, exported at scrape time.
- ``history``: the recent totals the dashboard starts its charts from.
- ``dashboard``: ``GET /dashboard`` and its static assets (``static/``).
"""
