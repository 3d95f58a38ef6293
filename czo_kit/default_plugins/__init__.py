"""Built-in plugins. Each is registered like a third-party plugin and can be blocked by name."""
