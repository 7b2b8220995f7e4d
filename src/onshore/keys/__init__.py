"""Key custody: identities (Ed25519) and key-encryption keys per site and member, envelope encryption."""
