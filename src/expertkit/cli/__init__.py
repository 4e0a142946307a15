"""The `expertkit` command: one table of commands, one error boundary; each command is thin."""
