"""The worker's fast path: one queue task carries many deliveries, claimed in one statement,
POSTed over one kept-alive connection per target, and recorded a few at a time; a worker
killed with successes still in its buffer leaves them ``running``, and the sweep sends them
again (at least once; the receiver dedupes on ``webhook-id``)."""

from __future__ import annotations

import shutil
import socket
import textwrap
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from apps_support import (
    OWNER,
    Receiver,
    Reply,
    Request,
    app_kit,
    app_settings,
    kill_9,
    manifest,
    raw_rows,
    recorded_deliveries,
    wait_for,
    webhook_worker_env,
    worker_processes,
)
from czo_kit import Kit
from czo_kit.apps import _webhook_batch, net
from czo_kit.apps.net import OutboundHTTP
from czo_kit.apps.signing import verify_signature
from czo_kit.db.model import utcnow
from czo_kit.settings import Settings
from test_cache_redis import PrivateRedis

SettingsFor = Callable[..., Settings]


def test_deliveries_to_one_target_share_one_kept_alive_connection_and_one_task(
    sqlite_url: str, settings_for: SettingsFor, tmp_path: Path
) -> None:
    with Receiver() as receiver, app_kit(app_settings(settings_for, sqlite_url, str(tmp_path))) as kit:
        kit.apps.install(shop_id=1, installer_id=OWNER, manifest=manifest(receiver.url))
        batches: list[int] = []
        real = kit.webhooks.deliver_many

        def deliver_many(ids: list[int]) -> list[str]:
            batches.append(len(ids))
            return real(ids)

        kit.webhooks.deliver_many = deliver_many  # type: ignore[method-assign]
        with kit.db.atomic():  # one commit: the relay hands the ten over together
            for n in range(10):
                kit.events.emit_async("order.created", {"shop_id": 1, "id": n, "total": n})
        kit.webhooks.flush()
        with kit.consumer(workers=1, sweep_interval=60):
            wait_for(lambda: kit.webhooks.stats(delivered=True) == {"delivered": 10}, what="ten deliveries")
        posts = receiver.posts("/hook")
        assert sorted(p.json()["data"]["id"] for p in posts) == list(range(10))
        assert len({p.client_port for p in posts}) == 1, "each delivery opened a connection of its own"
        assert len(batches) < 10 and sum(batches) == 10, batches  # tasks of several deliveries
        assert len(raw_rows(kit, "czo_webhook_attempt")) == 10


def orders_queued(kit: Kit, receiver_url: str, total: int) -> None:
    """Install the receiver's app on an empty queue, then emit ``total`` orders in one
    transaction and wait until the relays have handed their events and deliveries over."""
    kit.apps.install(shop_id=1, installer_id=OWNER, manifest=manifest(receiver_url))
    assert kit.queue is not None
    kit.queue.flush()
    with kit.db.atomic():
        for n in range(total):
            kit.events.emit_async("order.created", {"shop_id": 1, "id": n, "total": n})
    kit.outbox.flush()
    kit.webhooks.flush()


WORKER = textwrap.dedent(
    """
    from czo_kit import Kit
    from czo_kit.apps import _webhook_batch
    from czo_kit.events.queue import Sweeper

    # Record successes only at the end of a task, so that a kill lands while some are buffered.
    _webhook_batch.FLUSH_EVERY = 10_000
    _webhook_batch.FLUSH_AFTER = 3600.0
    kit = Kit.from_env()
    sweeper = Sweeper(kit.outbox, 0.5, kit.webhooks)
    consumer = kit.queue.create_consumer(workers=1)
    sweeper.start()
    consumer.run()
    """
)


@pytest.mark.redis
@pytest.mark.postgres
def test_kill_9_with_successes_buffered_sends_every_webhook_at_least_once(
    pg_url: str, redis_url: str, settings_for: SettingsFor, tmp_path: Path
) -> None:
    total, answered = 64, 5
    queue_name = f"czo_webhook_batch_kill_{uuid.uuid4().hex[:8]}"
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = webhook_worker_env(pg_url, redis_url, queue_name, lease=4)
    seen: Counter[str] = Counter()
    lock = threading.Lock()
    hold = threading.Event()  # the worker's next POST hangs until the kill

    def script_(request: Request) -> Reply:
        with lock:
            seen[request.headers["webhook-id"]] += 1
            first_run = sum(seen.values()) > answered and not hold.is_set()
        if first_run:
            hold.wait(60)
        return Reply(200)

    settings = app_settings(
        settings_for, pg_url, str(tmp_path), queue_url=redis_url, queue_name=queue_name, webhooks_lease=4.0
    )
    with (
        Receiver(script_) as receiver,
        app_kit(settings) as kit,
        worker_processes(kit, script, env, tmp_path) as start_worker,
    ):
        try:
            orders_queued(kit, receiver.url, total)
            first = start_worker("first")
            wait_for(lambda: sum(seen.values()) == answered + 1, timeout=60, what="the POST that hangs")
            kill_9(first)
            # Five POSTs were answered 2xx (a first task may have carried one delivery alone,
            # recorded at its end); the others' record was in the buffer the kill took.
            states = kit.webhooks.stats(delivered=True)
            lost_records = answered - states.get("delivered", 0)
            assert lost_records > 0 and states.get("running", 0) >= lost_records + 1, states
            hold.set()

            start_worker("second")
            wait_for(lambda: kit.webhooks.stats(delivered=True) == {"delivered": total}, timeout=120,
                     what="every delivery after the restart")
        finally:
            hold.set()
        message_ids = {row["message_id"] for row in raw_rows(kit, "czo_webhook_delivery")}
    assert len(message_ids) == total and message_ids <= set(seen), "a delivery never reached the receiver"
    twice = [key for key, count in seen.items() if count > 1]
    assert len(twice) >= lost_records, twice  # the buffered ones were sent again: at least once, not lost


def test_a_batch_running_past_half_its_lease_hands_the_rest_back_unattempted(
    sqlite_url: str, settings_for: SettingsFor, tmp_path: Path
) -> None:
    settings = app_settings(settings_for, sqlite_url, str(tmp_path), webhooks_lease=0.4)
    with Receiver(lambda request: Reply(200, delay=0.3)) as receiver, app_kit(settings) as kit:
        ids = recorded_deliveries(kit, receiver.url)
        # The first POST takes 0.3 s, past half the 0.4 s lease: the other two go back to
        # the queue without an attempt spent, instead of waiting under a lease about to end.
        assert kit.webhooks.deliver_many(ids) == ["delivered", "queued", "queued"]
        rows = {d.id: (d.state, d.attempts, d.lease_until) for d in kit.webhooks.deliveries()}
        assert rows[ids[1]] == ("queued", 0, None) and rows[ids[2]] == ("queued", 0, None)
        assert len(receiver.posts("/hook")) == 1
        assert kit.queue.pending_count() >= 1  # handed to the queue again, in one task
        with kit.consumer(workers=1, sweep_interval=60):
            wait_for(lambda: kit.webhooks.stats(delivered=True) == {"delivered": 3}, what="the rest")
        assert len(receiver.posts("/hook")) == 3


def test_a_delivery_on_its_last_attempt_is_claimed_alone_right_before_its_post(
    sqlite_url: str, settings_for: SettingsFor, tmp_path: Path
) -> None:
    settings = app_settings(settings_for, sqlite_url, str(tmp_path), webhooks_retry_schedule=(1.0,))  # 2 attempts
    with Receiver() as receiver, app_kit(settings) as kit:
        ids = recorded_deliveries(kit, receiver.url, 5)
        # Two of them had an attempt counted by a worker that died (the sweep queued them again);
        # the last one was delivered already (this task is a duplicate for it).
        kit.db.execute_sql('UPDATE "czo_webhook_delivery" SET attempts = 1 WHERE id IN (?, ?)', (ids[1], ids[3]))
        kit.db.execute_sql("UPDATE \"czo_webhook_delivery\" SET state = 'delivered' WHERE id = ?", (ids[4],))
        claims: list[list[int]] = []
        real_claim = _webhook_batch.claim

        def claim(db: object, chunk: list[int], *args: object) -> list[object]:
            taken = real_claim(db, chunk, *args)  # type: ignore[arg-type]
            claims.append([int(d.id) for d in taken])
            return taken  # type: ignore[return-value]

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(_webhook_batch, "claim", claim)
            assert kit.webhooks.deliver_many(ids) == ["delivered"] * 4 + ["skipped"]
        # The batch took the two on their first attempt; each last attempt was claimed alone,
        # and the delivered one not at all.
        assert claims == [[ids[0], ids[2]], [ids[1]], [ids[3]]]
        rows = {row["id"]: row["attempts"] for row in raw_rows(kit, "czo_webhook_delivery")}
        assert rows == {ids[0]: 1, ids[1]: 2, ids[2]: 1, ids[3]: 2, ids[4]: 0}
    assert sorted(p.json()["data"]["id"] for p in receiver.posts("/hook")) == [0, 1, 2, 3]


@pytest.mark.redis
@pytest.mark.postgres
def test_killing_the_worker_twice_dead_letters_only_what_it_was_posting(
    pg_url: str, redis_url: str, settings_for: SettingsFor, tmp_path: Path
) -> None:
    # Two attempts per delivery. The first worker is killed holding a claim of 32 (one attempt
    # each counted); the sweep queues them again; the second is killed on its first POST of one
    # of those. Before, the second claim took all of them on their last attempt and the sweep
    # dead-lettered every one; now only the delivery it was sending ends dead.
    total = 64
    queue_name = f"czo_webhook_last_{uuid.uuid4().hex[:8]}"
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**webhook_worker_env(pg_url, redis_url, queue_name, lease=3), "CZO_WEBHOOKS_RETRY_SCHEDULE": "1"}
    seen: Counter[str] = Counter()
    lock = threading.Lock()
    hang_on: set[str] = set()  # message ids whose next POST hangs (once), until the kill
    hanging = threading.Event()
    release = threading.Event()

    def script_(request: Request) -> Reply:
        message_id = request.headers["webhook-id"]
        with lock:
            seen[message_id] += 1
            hang = message_id in hang_on and not hanging.is_set()
            if hang:
                hanging.set()
        if hang:
            release.wait(60)
        return Reply(200)

    def rows() -> list[dict[str, object]]:
        return raw_rows(kit, "czo_webhook_delivery")

    settings = app_settings(
        settings_for, pg_url, str(tmp_path), queue_url=redis_url, queue_name=queue_name,
        webhooks_lease=3.0, webhooks_retry_schedule=(1.0,),
    )
    with (
        Receiver(script_) as receiver,
        app_kit(settings) as kit,
        worker_processes(kit, script, env, tmp_path) as start_worker,
    ):
        try:
            orders_queued(kit, receiver.url, total)
            # Two tasks of 32, whatever the relay grouped: the first worker's claim holds 32.
            assert kit.queue is not None and kit.webhooks.queue is not None
            kit.queue.flush()
            kit.webhooks.queue.deliver_many(sorted(int(row["id"]) for row in rows()), delay=0)
            assert kit.queue.pending_count() == 2
            with lock:
                hang_on.update(str(row["message_id"]) for row in rows())  # the first POST of all hangs
            first = start_worker("first")
            wait_for(hanging.is_set, timeout=60, what="the first worker's hanging POST")
            kill_9(first)
            held = {str(row["message_id"]) for row in rows() if row["state"] == "running"}
            assert len(held) > 1 and all(row["attempts"] == 1 for row in rows() if row["state"] == "running")
            with lock:  # the second worker hangs on the first of those it sends again
                hang_on.clear()
                hang_on.update(held)
                hanging.clear()
            release.set()
            release = threading.Event()
            second = start_worker("second")
            wait_for(hanging.is_set, timeout=60, what="the second worker's hanging POST")
            kill_9(second)
            release.set()
            start_worker("third")
            wait_for(lambda: all(row["state"] in ("delivered", "dead") for row in rows()), timeout=120,
                     what="every delivery delivered or dead")
        finally:
            release.set()
        dead = [row for row in rows() if row["state"] == "dead"]
        delivered = {str(row["message_id"]) for row in rows() if row["state"] == "delivered"}
    assert len(dead) == 1, [(row["message_id"], row["attempts"], row["last_error"]) for row in dead]
    assert str(dead[0]["message_id"]) in held  # the one the second worker was sending
    assert len(delivered) == total - 1 and delivered <= set(seen)




def test_an_uninstall_during_a_batch_stops_its_webhooks_as_for_one_delivery(
    sqlite_url: str, settings_for: SettingsFor, tmp_path: Path
) -> None:
    kit_: list[Kit] = []

    def uninstall_on_first(request: Request) -> Reply:
        kit_[0].apps.uninstall(shop_id=1, app_id="acme")  # the app is gone before it answers
        return Reply(200)

    with Receiver(uninstall_on_first) as receiver, app_kit(app_settings(settings_for, sqlite_url, str(tmp_path))) as kit:
        kit_.append(kit)
        ids = recorded_deliveries(kit, receiver.url)
        states = kit.webhooks.deliver_many(ids)
        # The other two went with the installation: never sent to the app it no longer is.
        assert len(receiver.posts("/hook")) == 1, states
        assert states[1:] == ["skipped", "skipped"]


def test_a_secret_rotated_without_grace_during_a_batch_signs_the_rest_of_it(
    sqlite_url: str, settings_for: SettingsFor, tmp_path: Path
) -> None:
    kit_: list[Kit] = []
    new: list[str] = []

    def rotate_on_first(request: Request) -> Reply:
        if not new:  # the old secret leaked: rotated with no grace, it signs nothing more
            new.append(kit_[0].apps.rotate_webhook_secret(shop_id=1, app_id="acme", grace=0))
        return Reply(200)

    with Receiver(rotate_on_first) as receiver, app_kit(app_settings(settings_for, sqlite_url, str(tmp_path))) as kit:
        kit_.append(kit)
        ids = recorded_deliveries(kit, receiver.url)
        assert kit.webhooks.deliver_many(ids) == ["delivered"] * 3
        posts = receiver.posts("/hook")
    assert len(posts) == 3
    for post in posts[1:]:
        assert verify_signature(post.body, post.headers["x-czo-signature"], new[0])


def test_a_batch_that_outlived_its_lease_never_gives_back_another_workers_claim(
    db_url: str, settings_for: SettingsFor, tmp_path: Path
) -> None:
    kit_: list[Kit] = []
    ids: list[int] = []
    others: list[int] = []

    def outlive_the_lease(request: Request) -> Reply:
        # The first POST outlasts the whole lease (a slow target, a pause of the worker): the
        # sweep takes the batch's deliveries back, and another worker claims the second one.
        kit = kit_[0]

        def expired() -> bool:
            row = kit.webhooks.delivery(ids[0])
            return row.lease_until is not None and row.lease_until < utcnow()

        if not others:
            wait_for(expired, what="the batch's lease to run out")
            assert kit.webhooks.sweep()["recovered"] == 3
            others.extend(int(d.id) for d in _webhook_batch.claim(kit.db, [ids[1]], utcnow(), 60.0))
        return Reply(200)

    settings = app_settings(settings_for, db_url, str(tmp_path), webhooks_lease=0.4)
    with Receiver(outlive_the_lease) as receiver, app_kit(settings) as kit:
        kit_.append(kit)
        ids.extend(recorded_deliveries(kit, receiver.url))
        kit.webhooks.deliver_many(ids)
        assert others == [ids[1]]
        other = kit.webhooks.delivery(ids[1])
        # Still the other worker's: running under its lease, with its attempt counted.
        assert (other.state, other.attempts) == ("running", 2)
        assert other.lease_until is not None and other.lease_until > utcnow()
        assert [p.json()["data"]["id"] for p in receiver.posts("/hook")] == [0]


@pytest.mark.redis
def test_a_batch_stopped_by_a_failure_gives_back_what_it_did_not_attempt(
    sqlite_url: str, redis_url: str, settings_for: SettingsFor, tmp_path: Path
) -> None:
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is needed to start a queue server of this test's own"
    queue = PrivateRedis(binary)
    queue.start()

    def fail_then_lose_the_queue(request: Request) -> Reply:
        queue.kill()  # the queue's server goes away: the retry of this 503 cannot be queued
        return Reply(503)

    settings = app_settings(settings_for, sqlite_url, str(tmp_path), queue_url=queue.url)
    try:
        with Receiver(fail_then_lose_the_queue) as receiver, app_kit(settings) as kit:
            ids = recorded_deliveries(kit, receiver.url)
            with pytest.raises(redis.ConnectionError):
                kit.webhooks.deliver_many(ids)
            rows = {d.id: d for d in kit.webhooks.deliveries()}
            assert (rows[ids[0]].state, rows[ids[0]].attempts) == ("retry", 1)  # recorded: the sweep re-queues it
            # The two never sent are queued again with no attempt spent, not held ``running``
            # for a whole lease with an attempt counted.
            assert [(rows[i].state, rows[i].attempts, rows[i].lease_until) for i in ids[1:]] == [("queued", 0, None)] * 2
            assert len(receiver.posts("/hook")) == 1
    finally:
        queue.kill()


def test_a_success_on_its_last_attempt_is_recorded_before_the_next_post(
    sqlite_url: str, settings_for: SettingsFor, tmp_path: Path
) -> None:
    # Kept in the buffer, a last attempt's success would be ``running`` on its last attempt
    # during the next POST: a worker killed then leaves it to the sweep, which dead-letters it
    # ("stopped during the last attempt") although the receiver has it.
    kit_: list[Kit] = []
    seen_first: list[str] = []

    def look_at_the_first(request: Request) -> Reply:
        if request.json()["data"]["id"] == 1:
            first = [row for row in raw_rows(kit_[0], "czo_webhook_delivery") if row["attempts"] == 2]
            seen_first.extend(str(row["state"]) for row in first if row["message_id"] == first_id[0])
        return Reply(200)

    first_id: list[str] = []
    settings = app_settings(settings_for, sqlite_url, str(tmp_path), webhooks_retry_schedule=(1.0,))  # 2 attempts
    with Receiver(look_at_the_first) as receiver, app_kit(settings) as kit:
        kit_.append(kit)
        ids = recorded_deliveries(kit, receiver.url)
        kit.db.execute_sql('UPDATE "czo_webhook_delivery" SET attempts = 1')  # each on its last attempt
        first_id.append(str(kit.webhooks.delivery(ids[0]).message_id))
        assert kit.webhooks.deliver_many(ids) == ["delivered"] * 3
        assert len(receiver.posts("/hook")) == 3
    assert seen_first == ["delivered"]


class KeepAliveServer:
    """A loopback HTTP/1.1 server that answers every request 200 and never closes a
    connection itself (as a target whose idle timeout is long, or a hostile one): ``open``
    counts the connections a client still holds."""

    def __init__(self, *, close_reused: bool = False) -> None:
        self.close_reused = close_reused  # close a connection as its second request arrives
        self.answered = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.open = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.open += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        served = 0
        try:
            while True:
                length = 0
                line = reader.readline()
                if not line:
                    return  # the client closed the connection
                while line not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                    line = reader.readline()
                reader.read(length)
                if self.close_reused and served:
                    return  # its idle timeout ran out as the request came in: no answer
                served += 1
                with self.lock:
                    self.answered += 1
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except OSError:
            return
        finally:
            with self.lock:
                self.open -= 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


def test_a_target_no_longer_posted_to_has_its_kept_alive_connection_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    # Its address changed (DNS rotation) or its app went: a pool kept for ever would hold its
    # sockets for ever, one more set at each change, until the worker runs out of descriptors.
    monkeypatch.setattr(net, "POOL_IDLE", 0.2)
    old, new = KeepAliveServer(), KeepAliveServer()
    http = OutboundHTTP(allow_private=True)
    try:
        assert http.request("POST", old.url + "/hook", body=b"{}").status == 200
        assert old.open == 1

        def old_closed() -> bool:
            assert http.request("POST", new.url + "/hook", body=b"{}").status == 200
            return old.open == 0

        wait_for(old_closed, what="the connection to the target no longer used to be closed")
        assert new.open == 1  # the one in use is kept alive
    finally:
        http.close()
        old.close()
        new.close()


def test_a_kept_alive_connection_the_target_closed_as_a_delivery_went_out_is_no_target_failure(
    sqlite_url: str, settings_for: SettingsFor, tmp_path: Path
) -> None:
    # A server closes an idle kept-alive connection (its keep-alive timeout) just as the next
    # delivery goes out on it: nothing was answered. The delivery goes again on a new
    # connection, not into the retry schedule with a failure counted against the target.
    server = KeepAliveServer(close_reused=True)
    try:
        with app_kit(app_settings(settings_for, sqlite_url, str(tmp_path))) as kit:
            ids = recorded_deliveries(kit, server.url)
            assert kit.webhooks.deliver_many(ids) == ["delivered"] * 3
            assert raw_rows(kit, "czo_webhook_circuit") == []
            assert sorted(row["status"] for row in raw_rows(kit, "czo_webhook_attempt")) == [200] * 3
        assert server.answered == 3
    finally:
        server.close()


def test_deliveries_handed_back_unclaimed_look_freshly_queued_to_the_sweep(
    sqlite_url: str, settings_for: SettingsFor, tmp_path: Path
) -> None:
    # Three deliveries on their last attempt (claimed one by one); the first POST outlasts
    # half the lease, so the other two go back to the queue without being claimed. The sweep
    # counts a queued delivery older than the oldest waiting task as lost: their timestamp
    # must say they were queued just now, or each would be queued a second time.
    settings = app_settings(
        settings_for, sqlite_url, str(tmp_path), webhooks_lease=1.0, webhooks_retry_schedule=(1.0,)
    )
    with Receiver(lambda request: Reply(200, delay=0.6)) as receiver, app_kit(settings) as kit:
        ids = recorded_deliveries(kit, receiver.url)
        kit.db.execute_sql(
            "UPDATE \"czo_webhook_delivery\" SET attempts = 1, updated_at = '2000-01-01 00:00:00'"
        )
        assert kit.webhooks.deliver_many(ids) == ["delivered", "queued", "queued"]
        rows = {d.id: d for d in kit.webhooks.deliveries()}
        for delivery_id in ids[1:]:
            assert rows[delivery_id].state == "queued" and rows[delivery_id].attempts == 1
            assert rows[delivery_id].updated_at.year > 2000, "handed back with its old timestamp"


def test_many_tasks_with_forged_arguments_fail_clearly_and_touch_nothing(
    sqlite_url: str, settings_for: SettingsFor, tmp_path: Path
) -> None:
    # Someone who can write to the queue's storage enqueues a many-task whose argument is not
    # a list of ids: a string of digits used to read as one delivery id per character.
    with Receiver() as receiver, app_kit(app_settings(settings_for, sqlite_url, str(tmp_path))) as kit:
        forged_ids = "".join(str(i) for i in recorded_deliveries(kit, receiver.url))
        assert kit.webhooks.queue is not None
        queue: Any = kit.webhooks.queue.queue  # the kit's HueyQueue, which registers the tasks
        for task, argument in (
            (queue._deliver_webhooks, forged_ids), (queue._deliver_webhooks, [True]),
            (queue._deliver_webhooks, ["1"]), (queue._deliver_webhooks, {"1": 1}),
            (queue._dispatch_many, "ev"), (queue._dispatch_many, [1, 2]),
        ):
            with pytest.raises(TypeError, match="expects a list of"):
                task.call_local(argument)
        assert kit.webhooks.stats() == {"queued": 3}
        assert receiver.posts("/hook") == []
