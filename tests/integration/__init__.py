"""End-to-end tests: real bitfi node processes talking over 127.0.0.1."""
