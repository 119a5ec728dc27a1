"""MMEngine glue: optimizer constructor, hooks, safe checkpoint loading, runner helpers."""
