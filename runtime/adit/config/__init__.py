"""config.yml: discovery, parsing into msgspec structs, validation, ingress rules."""
