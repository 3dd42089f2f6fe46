"""A keel project: its declarations (with their measures and schedules), the catalog they form, the
built-in declarations keel adds, its checks, its schemas and its profile config.

The vocabulary every component reads: it imports nothing of keel but `errors` and `schemes`."""
