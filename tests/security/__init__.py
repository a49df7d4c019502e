"""Security tests: secrets never shown, TLS pass-through, hostile input."""
