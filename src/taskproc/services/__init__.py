"""Service layer: the operations the API and the CLI perform on tasks."""
