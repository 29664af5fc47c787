"""The Redis side every process shares: the Streams broker, messages, rate limiter, breaker, lease."""
