"""The `keel` command: its verbs (`commands`), the demo, and the table rendering both use (`render`)."""
