"""Tunnel credentials files, tunnel tokens and origin certificates (cert.pem)."""
