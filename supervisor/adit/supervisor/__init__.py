"""The connector supervisor: signals, sd_notify, config and credentials, metrics; never a stream."""
