"""Gunicorn settings for the API, read from the environment like everything else."""

import os

bind = f"0.0.0.0:{os.environ.get('PORT', '4000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "3"))
# Green threads: a request waiting on a data store costs a greenlet, not an OS thread contending
# for the GIL, and the requests in flight in one process share the stores' round trips
# (queueing/batching.py); see docs/decisions/0003-gevent-gunicorn-workers.md.
worker_class = "gevent"
# Each worker listens on its own SO_REUSEPORT socket, so the kernel spreads keep-alive connections
# evenly; on one shared socket whichever worker wakes first takes them, and its clients wait longest.
reuse_port = True
# gunicorn's C parser (gunicorn_h1c, pinned in requirements.txt), required rather than tried so a
# missing build fails at start-up instead of quietly serving slower (docs/benchmarks.md).
http_parser = "fast"
timeout = 30
graceful_timeout = 20
accesslog = "-" if os.environ.get("ACCESS_LOG") else None
# The path without its query: a webhook's query carries the job's callback token.
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms'
# The runtime control socket defaults to one path per user, shared by every gunicorn on the host.
control_socket_disable = True
