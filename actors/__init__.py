"""The Dramatiq side: the Redis Streams broker, the fetch actor and the worker entry point."""
