"""Process A of the subscription-cache tests: a kit on the database named by ``argv[1]`` that
emits a shop event when told to, and reports what its subscription memory holds.

One command a line on stdin, one JSON answer a line on stdout:
``emit <shop>`` (``order.created`` for that shop, by name), ``status``, ``quit``.
"""

from __future__ import annotations

import json
import sys

from czo_kit import Kit
from czo_kit.settings import Settings


def main() -> None:
    # A queue nobody consumes, in its working directory: deliveries are recorded and stay queued.
    kit = Kit(Settings(database_url=sys.argv[1], secret_key="s" * 32, queue_url="sqlite:///queue-a.sqlite3",
                       cache_url="memory://"))
    cache = kit.apps.subscription_cache
    seq = 0
    try:
        for line in sys.stdin:
            command, _, argument = line.strip().partition(" ")
            if command == "emit":
                seq += 1
                ctx = kit.events.emit("order.created", {"shop_id": int(argument), "id": seq})
                answer: dict[str, object] = {"event_id": ctx.event_id}
            elif command == "status":
                answer = {"state": cache.state, "cached": cache.cached_shops(), "listener": cache.listener_pid()}
            elif command == "quit":
                break
            else:
                answer = {"error": f"unknown command {command!r}"}
            print(json.dumps(answer), flush=True)
    finally:
        kit.close()


if __name__ == "__main__":
    main()
