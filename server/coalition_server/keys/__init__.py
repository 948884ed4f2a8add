"""Server-held keys: the log key, the coalition's statement key (later: key-encryption keys)."""
