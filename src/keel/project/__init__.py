"""A keel project: its declarations, the catalog they form, its checks, its schemas and its profile config."""
