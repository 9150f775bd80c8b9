"""Messages between the supervisor and its workers, and the ZeroMQ plumbing for them."""
