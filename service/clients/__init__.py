"""The service's clients: who they are (API keys), what they may send, and how much of it waits.

    store.py     clients and their API keys in MongoDB; keys are kept only as SHA-256 digests
    auth.py      the API's middleware that names each request's client from its Bearer key
    limits.py    each client's request rate, counted in Redis, answered with RateLimit headers
    __main__.py  `python -m service.clients add|list|revoke|rotate`
"""
