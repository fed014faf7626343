"""Security tests: hostile input against the peer-facing decoders."""
