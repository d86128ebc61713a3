"""Community roles and collections: requirements.yml, its lock, and where they are installed."""
