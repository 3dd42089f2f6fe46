"""Running a project: the runtime that opens its engines, the supervisor, and the process that hosts its roles."""
