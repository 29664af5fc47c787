"""StreamsBroker against a real Redis: the behaviours dramatiq's own broker tests check, and more."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import dramatiq
import pytest
import redis
from dramatiq import Worker
from dramatiq.broker import MessageProxy
from dramatiq.errors import ConnectionClosed, QueueJoinTimeout
from dramatiq.middleware import Callbacks, CurrentMessage, Middleware, Pipelines, Retries, TimeLimit

from devtools.stack import wait_until
from devtools.stores import free_port
from queueing import deadletters
from queueing.broker import StreamsBroker
from queueing.consumer import StreamsConsumer
from queueing.keys import dead_key, delay_key
from queueing.nodes import WAIT_TIMEOUT_MS, WAIT_WITHOUT_REPLICA_MS

QUEUE = "job-queue"
DEADLINE_S = 10.0


class Recorder(Middleware):
    """Record every hook the broker and worker emit, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.enqueued_delays: list[int | None] = []
        self.processed_options: list[dict] = []

    def __getattribute__(self, name: str):
        if name.startswith(("before_", "after_")):
            def record(broker, *args, **kwargs):
                subject = args[0] if args else None
                label = subject if isinstance(subject, str) else getattr(subject, "actor_name", "")
                self.calls.append((name, label))
                if name == "after_enqueue":
                    self.enqueued_delays.append(args[1])
                if name == "before_process_message":
                    self.processed_options.append(dict(subject.options))
            return record
        return super().__getattribute__(name)


@pytest.fixture
def dead_letters() -> list[tuple[dramatiq.Message, str]]:
    return []


@pytest.fixture
def broker_options() -> dict:
    """Give the options every broker of a test is built with (the cluster suite asks for replicas)."""
    return {}


@pytest.fixture
def make_broker(redis_client, dead_letters, broker_options) -> Iterator[Callable[..., StreamsBroker]]:
    """Build brokers on the test's flushed database that report dead letters to dead_letters."""
    brokers: list[StreamsBroker] = []

    def make(**options) -> StreamsBroker:
        middleware = [TimeLimit(), Callbacks(), Pipelines(), Retries(min_backoff=50, max_backoff=100), CurrentMessage()]
        options = {"middleware": middleware, **broker_options, **options}
        broker = StreamsBroker(client=redis_client, on_dead_letter=lambda m, r: dead_letters.append((m, r)), **options)
        broker.declare_queue(QUEUE)
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        broker.close()


@pytest.fixture
def broker(make_broker) -> StreamsBroker:
    return make_broker()


@pytest.fixture
def start_worker() -> Iterator[Callable[[StreamsBroker], Worker]]:
    """Start in-process dramatiq workers, stopped after the test."""
    workers: list[Worker] = []

    def start(broker: StreamsBroker, threads: int = 2) -> Worker:
        worker = Worker(broker, worker_timeout=100, worker_threads=threads)
        worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop(timeout=5_000)


def drain(broker: StreamsBroker, worker: Worker) -> None:
    """Wait until every message of the queue, delayed ones included, has been processed."""
    broker.join(QUEUE, timeout=int(DEADLINE_S * 1000))
    worker.join()


def next_message(consumer: StreamsConsumer, timeout_s: float = DEADLINE_S) -> MessageProxy:
    """Iterate a consumer until it yields a message."""
    deadline = time.monotonic() + timeout_s
    while (message := next(consumer)) is None:
        assert time.monotonic() < deadline, "no message before the deadline"
    return message


def new_message(*args: object, actor_name: str = "record") -> dramatiq.Message:
    return dramatiq.Message(queue_name=QUEUE, actor_name=actor_name, args=args, kwargs={}, options={})


def test_sent_messages_are_processed_and_deleted_on_ack(broker, start_worker, redis_client):
    seen: list[int] = []

    @dramatiq.actor(broker=broker, queue_name=QUEUE)
    def record(n: int) -> None:
        seen.append(n)

    worker = start_worker(broker)
    for n in range(50):
        record.send(n)
    drain(broker, worker)

    assert sorted(seen) == list(range(50))
    assert redis_client.xlen(QUEUE) == 0
    assert redis_client.xpending(QUEUE, broker.group)["pending"] == 0


def test_enqueue_unwraps_a_message_proxy_and_returns_the_message(broker, redis_client):
    message = new_message(1)

    enqueued = broker.enqueue(MessageProxy(message))

    assert enqueued == message
    [(_, fields)] = redis_client.xrange(QUEUE)
    assert dramatiq.Message.decode(fields[b"message"]) == message


def test_a_stale_eta_never_reaches_the_stream(broker, redis_client):
    broker.enqueue(new_message(1).copy(options={"eta": 1}))

    [(_, fields)] = redis_client.xrange(QUEUE)
    assert "eta" not in dramatiq.Message.decode(fields[b"message"]).options


def test_failing_message_is_dead_lettered_with_its_reason_and_reported(broker, start_worker, redis_client, dead_letters):
    @dramatiq.actor(broker=broker, queue_name=QUEUE, max_retries=0)
    def explode() -> None:
        raise ValueError("vendor said no")

    worker = start_worker(broker)
    message = explode.send()
    drain(broker, worker)

    [(_, fields)] = redis_client.xrange(dead_key(QUEUE))
    assert fields[b"reason"] == b"ValueError: vendor said no"
    assert dramatiq.Message.decode(fields[b"message"]).message_id == message.message_id
    assert [(m.message_id, reason) for m, reason in dead_letters] == [(message.message_id, "ValueError: vendor said no")]
    assert redis_client.xlen(QUEUE) == 0


def test_dead_letter_stream_is_capped(make_broker, redis_client):
    broker = make_broker(dead_letter_maxlen=10)
    consumer = broker.consume(QUEUE, prefetch=500, timeout=100)
    for n in range(300):
        broker.enqueue(new_message(n))

    for _ in range(300):
        consumer.nack(next_message(consumer))

    # MAXLEN ~ trims whole macro nodes (100 entries by default): about the cap, never the 300.
    assert 10 <= redis_client.xlen(dead_key(QUEUE)) <= 110


def test_delayed_message_is_not_run_before_its_time_and_is_run_after(broker, start_worker, redis_client):
    ran_at: list[float] = []

    @dramatiq.actor(broker=broker, queue_name=QUEUE)
    def record() -> None:
        ran_at.append(time.time())

    recorder = Recorder()
    broker.add_middleware(recorder)
    worker = start_worker(broker)
    sent_at = time.time()
    message = record.send_with_options(delay=700)

    assert message.options["eta"] >= int(sent_at * 1000) + 700
    assert redis_client.zcard(delay_key(QUEUE)) == 1 and redis_client.xlen(QUEUE) == 0
    time.sleep(0.4)  # Part of the assertion: nothing may run during the delay.
    assert ran_at == []
    drain(broker, worker)

    assert len(ran_at) == 1 and ran_at[0] >= message.options["eta"] / 1000
    assert "eta" not in recorder.processed_options[0]


def test_delays_are_kept_in_redis_not_in_worker_memory(broker):
    assert broker.get_declared_delay_queues() == set()
    assert broker.get_declared_queues() == {QUEUE}


def test_actor_failing_twice_then_succeeding_runs_three_times_with_backoff_through_the_delay_set(
    make_broker, start_worker, redis_client
):
    broker = make_broker(middleware=[Retries(min_backoff=300, max_backoff=300)])
    recorder = Recorder()
    broker.add_middleware(recorder)
    attempts: list[int] = []

    @dramatiq.actor(broker=broker, queue_name=QUEUE, max_retries=3)
    def flaky() -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("try again")

    worker = start_worker(broker)
    flaky.send()
    wait_until(lambda: redis_client.zcard(delay_key(QUEUE)) == 1, DEADLINE_S)  # the first retry waits in Redis
    drain(broker, worker)

    assert len(attempts) == 3
    first, *retries = recorder.enqueued_delays
    assert first is None and len(retries) == 2 and all(delay > 0 for delay in retries)
    assert redis_client.xlen(dead_key(QUEUE)) == 0


def test_join_times_out_while_messages_remain(broker):
    broker.enqueue(new_message(1))

    with pytest.raises(QueueJoinTimeout):
        broker.join(QUEUE, timeout=200)


def test_join_waits_for_delayed_messages_too(broker):
    broker.enqueue(new_message(1), delay=60_000)

    with pytest.raises(QueueJoinTimeout):
        broker.join(QUEUE, timeout=200)


def test_flush_drops_queued_and_delayed_messages(make_broker, redis_client):
    broker = make_broker()
    broker.declare_queue("other")
    broker.enqueue(new_message(1))
    broker.enqueue(new_message(2), delay=60_000)
    broker.enqueue(dramatiq.Message(queue_name="other", actor_name="record", args=(), kwargs={}, options={}))

    broker.flush(QUEUE)
    assert broker.queue_size(QUEUE) == 0 and broker.queue_size("other") == 1
    broker.flush_all()
    assert broker.queue_size("other") == 0


def test_middleware_hooks_are_emitted_like_the_stock_brokers(broker, start_worker):
    recorder = Recorder()
    broker.add_middleware(recorder)

    @dramatiq.actor(broker=broker, queue_name=QUEUE, max_retries=0)
    def record(fail: bool) -> None:
        if fail:
            raise ValueError("fail")

    worker = start_worker(broker, threads=1)
    record.send(False)
    drain(broker, worker)
    record.send(True)
    drain(broker, worker)

    hooks = [name for name, _ in recorder.calls]
    for expected in [
        "before_declare_actor", "after_declare_actor", "before_worker_boot", "after_worker_boot",
        "before_enqueue", "after_enqueue", "before_process_message", "after_process_message",
        "before_ack", "after_ack", "before_nack", "after_nack",
    ]:
        assert expected in hooks
    flow = ["before_enqueue", "before_process_message", "after_process_message", "before_ack", "after_ack"]
    assert [hooks.index(name) for name in flow] == sorted(hooks.index(name) for name in flow)
    assert "before_delay_message" not in hooks


def test_callbacks_and_pipelines_run_their_follow_up_actors(broker, start_worker):
    results: list[object] = []

    @dramatiq.actor(broker=broker, queue_name=QUEUE)
    def add(x: int, y: int) -> int:
        return x + y

    @dramatiq.actor(broker=broker, queue_name=QUEUE)
    def keep(value: object) -> None:
        results.append(value)

    @dramatiq.actor(broker=broker, queue_name=QUEUE)
    def on_success(message: dict, result: int) -> None:
        results.append(("success", result))

    worker = start_worker(broker)
    add.send_with_options(args=(1, 2), on_success=on_success)
    dramatiq.pipeline([add.message(2, 3), keep.message()], broker=broker).run()
    drain(broker, worker)

    assert sorted(map(str, results)) == sorted(map(str, [("success", 3), 5]))


def test_message_of_a_consumer_that_never_acked_is_redelivered_after_the_visibility_timeout(make_broker):
    broker = make_broker(visibility_timeout_ms=200)
    sent = broker.enqueue(new_message(1))
    crashed = broker.consume(QUEUE, prefetch=1, timeout=50)
    assert next_message(crashed).message_id == sent.message_id  # and it dies without acking

    survivor = broker.consume(QUEUE, prefetch=1, timeout=50)
    started = time.monotonic()
    redelivered = next_message(survivor)

    assert redelivered.message_id == sent.message_id
    assert time.monotonic() - started >= 0.1
    survivor.ack(redelivered)
    assert broker.queue_size(QUEUE) == 0


def test_poison_message_is_dead_lettered_after_max_deliveries(make_broker, redis_client, dead_letters):
    broker = make_broker(visibility_timeout_ms=100, max_deliveries=2)
    sent = broker.enqueue(new_message(1))
    for _ in range(2):  # two consumers take it and die without acking
        assert next_message(broker.consume(QUEUE, prefetch=1, timeout=50)).message_id == sent.message_id

    last = broker.consume(QUEUE, prefetch=1, timeout=50)
    wait_until(lambda: next(last) is None and dead_letters, DEADLINE_S)

    reason = "delivered 2 times without ack (worker crashed or hung)"
    assert [(m.message_id, r) for m, r in dead_letters] == [(sent.message_id, reason)]
    [(_, fields)] = redis_client.xrange(dead_key(QUEUE))
    assert fields[b"reason"] == reason.encode()
    assert broker.queue_size(QUEUE) == 0


def test_long_running_message_keeps_its_claim_and_is_not_redelivered(make_broker, start_worker):
    broker = make_broker(visibility_timeout_ms=200)
    runs: list[int] = []
    finished = threading.Event()

    @dramatiq.actor(broker=broker, queue_name=QUEUE, time_limit=60_000)
    def slow() -> None:
        runs.append(1)
        time.sleep(1.2)  # six visibility timeouts
        finished.set()

    worker = start_worker(broker, threads=1)
    slow.send()
    wait_until(lambda: runs, DEADLINE_S)
    rival = make_broker(visibility_timeout_ms=200).consume(QUEUE, prefetch=1, timeout=50)
    while not finished.is_set():
        assert next(rival) is None, "the running message was handed to another consumer"
    drain(broker, worker)

    assert runs == [1]


def test_requeue_and_close_put_unstarted_messages_back_at_once(make_broker):
    broker = make_broker(visibility_timeout_ms=60_000)
    for n in range(4):
        broker.enqueue(new_message(n))
    first = broker.consume(QUEUE, prefetch=4, timeout=50)
    started, unstarted = next_message(first), next_message(first)  # two more stay in its buffer

    first.requeue([unstarted])
    first.close()
    first.ack(started)

    second = broker.consume(QUEUE, prefetch=4, timeout=50)
    redelivered = sorted(next_message(second, timeout_s=1).args[0] for _ in range(3))
    assert redelivered == sorted({0, 1, 2, 3} - {started.args[0]})


def test_group_is_recreated_after_the_stream_is_deleted(broker, start_worker, redis_client):
    seen: list[int] = []

    @dramatiq.actor(broker=broker, queue_name=QUEUE)
    def record(n: int) -> None:
        seen.append(n)

    worker = start_worker(broker)
    record.send(1)
    drain(broker, worker)
    redis_client.delete(QUEUE)
    record.send(2)
    drain(broker, worker)

    assert seen == [1, 2]


def test_idle_consumers_without_pending_entries_are_pruned(make_broker, redis_client):
    broker = make_broker(dead_consumer_idle_ms=100)
    gone = broker.consume(QUEUE, prefetch=1, timeout=20)
    assert next(gone) is None
    survivor = broker.consume(QUEUE, prefetch=1, timeout=20)

    def consumer_names() -> set[str]:
        next(survivor)
        return {c["name"] for c in redis_client.xinfo_consumers(QUEUE, broker.group)}

    wait_until(lambda: gone.name not in consumer_names(), DEADLINE_S)


def test_consumer_raises_connection_closed_when_redis_is_unreachable():
    broker = StreamsBroker(url=f"redis://127.0.0.1:{free_port()}/0")
    broker.declare_queue(QUEUE)

    with pytest.raises(ConnectionClosed):
        next(broker.consume(QUEUE, timeout=50))
    with pytest.raises(ConnectionClosed):
        broker.enqueue(new_message(1))


def test_dead_letters_can_be_listed_redriven_and_purged(broker, start_worker, redis_client):
    attempts: list[int] = []

    @dramatiq.actor(broker=broker, queue_name=QUEUE, max_retries=0)
    def flaky() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise ValueError("first try fails")

    @dramatiq.actor(broker=broker, queue_name=QUEUE, max_retries=0)
    def hopeless() -> None:
        raise LookupError("always fails")

    worker = start_worker(broker)
    flaky.send()
    hopeless.send()
    drain(broker, worker)

    listed = deadletters.list_dead_letters(redis_client, QUEUE)
    assert len(listed) == 2 and any(d.reason == "ValueError: first try fails" for d in listed)
    failed = next(d for d in listed if d.reason.startswith("ValueError"))
    assert deadletters.redrive(redis_client, QUEUE, [failed.entry_id]) == 1
    drain(broker, worker)

    assert len(attempts) == 2
    assert deadletters.purge(redis_client, QUEUE) == 1
    assert deadletters.list_dead_letters(redis_client, QUEUE) == []


def test_dead_letter_command_line_lists_and_purges(broker, redis_url, redis_client, monkeypatch, capsys):
    consumer = broker.consume(QUEUE, timeout=50)
    broker.enqueue(new_message(7))
    consumer.nack(next_message(consumer))
    monkeypatch.setenv("REDIS_URL", redis_url)

    deadletters.main(["list", "--queue", QUEUE])
    listed = capsys.readouterr().out
    assert "record(7)" in listed and "reason: nacked" in listed
    deadletters.main(["purge", "--queue", QUEUE])
    assert capsys.readouterr().out.strip() == "purged: 1"


def test_redis_errors_other_than_connection_loss_propagate(broker, redis_client):
    redis_client.set(QUEUE, "not a stream")

    with pytest.raises(redis.ResponseError):
        next(broker.consume(QUEUE, timeout=50))


def test_a_write_no_replica_acknowledged_is_refused_and_ridden_out_no_longer_than_asked(make_broker, redis_client):
    broker = make_broker(wait_replicas=1, outage_retry_s=(WAIT_TIMEOUT_MS + 200) / 1000)  # this server has no replica: two tries fit
    started = time.monotonic()

    # Tried again once after a pause, waiting less for a replica the first try did not find.
    with pytest.raises(ConnectionClosed, match=f"0 of 1 replicas .* within {WAIT_WITHOUT_REPLICA_MS} ms"):
        broker.enqueue(new_message(1))

    assert (WAIT_TIMEOUT_MS + WAIT_WITHOUT_REPLICA_MS) / 1000 <= time.monotonic() - started < 5
    assert redis_client.xlen(QUEUE) >= 2  # applied on the primary each time all the same: a retry may queue it twice
