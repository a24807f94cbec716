"""Shared building blocks every stage may use: durable writes, UID and DIMSE rules, addresses, logging, password hashes."""
