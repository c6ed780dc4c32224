"""Drives Switchboard's Pusher HTTP API with the official Python server SDK (`pusher` 3.3.4).

Usage: pusher-python.py PORT

A small raw WebSocket client (the `websockets` package) holds a public and a presence
subscription, signing the presence authorization itself with hmac/hashlib as an application
server would, so that the SDK's answers have something to describe. Every check prints
`ok: <check>`; a failure raises and exits non-zero. tests/tests/pusher.rs runs this, and
scripts/python-venv installs both packages.
"""

import hashlib
import hmac
import json
import sys
import time

import pusher
from pusher.errors import PusherBadAuth
from websockets.sync.client import connect

# The app of tests/src/pusher.rs (APPS_TOML).
APP_ID, KEY, SECRET = "1001", "app-key", "app-secret"
TIMEOUT = 5.0


def ok(what):
    print(f"ok: {what}", flush=True)


def check(cond, what, detail=None):
    if not cond:
        raise AssertionError(f"check failed: {what}" + ("" if detail is None else f" (got {detail!r})"))
    ok(what)


class Socket:
    """One Pusher WebSocket connection, read message by message with a deadline."""

    def __init__(self, port):
        url = f"ws://127.0.0.1:{port}/app/{KEY}?protocol=7&client=python-test&version=1.0"
        self.ws = connect(url, open_timeout=TIMEOUT, close_timeout=1)
        self.seen = []
        established = self.expect(lambda m: m.get("event") == "pusher:connection_established", "connection_established")
        # Pusher sends `data` as a JSON string.
        self.socket_id = json.loads(established["data"])["socket_id"]

    def expect(self, pred, what):
        deadline = time.monotonic() + TIMEOUT
        for message in self.seen:
            if pred(message):
                self.seen.remove(message)
                return message
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}; saw {self.seen!r}")
            try:
                text = self.ws.recv(timeout=left)
            except TimeoutError:
                continue
            message = json.loads(text)
            if pred(message):
                return message
            self.seen.append(message)

    def send(self, event, data):
        self.ws.send(json.dumps({"event": event, "data": data}))

    def subscribe(self, channel, auth=None, channel_data=None):
        data = {"channel": channel}
        if auth is not None:
            data["auth"] = auth
        if channel_data is not None:
            data["channel_data"] = channel_data
        self.send("pusher:subscribe", data)
        return self.expect(
            lambda m: m.get("channel") == channel
            and m.get("event") in ("pusher_internal:subscription_succeeded", "pusher:subscription_error"),
            f"the answer to subscribing to {channel}",
        )


def sign(socket_id, channel, channel_data=None):
    """`key:hex(HMAC-SHA256(secret, socket_id:channel[:channel_data]))`, as Pusher documents it."""
    message = f"{socket_id}:{channel}" + ("" if channel_data is None else f":{channel_data}")
    digest = hmac.new(SECRET.encode(), message.encode(), hashlib.sha256).hexdigest()
    return f"{KEY}:{digest}"


def event_on(sock, channel, name):
    message = sock.expect(lambda m: m.get("channel") == channel and m.get("event") == name, f"{name} on {channel}")
    data = message.get("data")
    return json.loads(data) if isinstance(data, str) else data


def main():
    port = int(sys.argv[1])
    client = pusher.Pusher(app_id=APP_ID, key=KEY, secret=SECRET, host="127.0.0.1", port=port, ssl=False)
    suffix = str(int(time.time() * 1000))
    news = f"py-news-{suffix}"
    room = f"presence-py-{suffix}"

    sock = Socket(port)
    check(sock.socket_id.count(".") == 1 and sock.socket_id.replace(".", "").isdigit(), "socket id", sock.socket_id)
    answer = sock.subscribe(news)
    check(answer["event"] == "pusher_internal:subscription_succeeded", "raw client subscribed to a public channel", answer)
    channel_data = json.dumps({"user_id": "py-user", "user_info": {"lang": "python"}})
    answer = sock.subscribe(room, sign(sock.socket_id, room, channel_data), channel_data)
    check(answer["event"] == "pusher_internal:subscription_succeeded", "presence subscription signed with hmac", answer)
    presence = answer["data"]
    presence = json.loads(presence) if isinstance(presence, str) else presence
    check(presence["presence"]["ids"] == ["py-user"], "presence list holds the one member", presence)
    answer = sock.subscribe(f"private-py-{suffix}", f"{KEY}:{'0' * 64}")
    check(answer["event"] == "pusher:subscription_error", "a forged private signature is refused", answer)

    result = client.trigger(news, "hello", {"from": "python"})
    check(result == {}, "trigger answers {}", result)
    check(event_on(sock, news, "hello") == {"from": "python"}, "trigger reaches the subscriber")

    client.trigger_batch(
        [
            {"channel": news, "name": "batch-1", "data": {"i": 1}},
            {"channel": room, "name": "batch-2", "data": "text"},
        ]
    )
    check(event_on(sock, news, "batch-1") == {"i": 1}, "trigger_batch event 1")
    batch2 = sock.expect(lambda m: m.get("channel") == room and m.get("event") == "batch-2", "batch-2")
    check(batch2.get("data") == "text", "trigger_batch event 2 (string data as is)", batch2)

    client.trigger(news, "not-for-me", {"x": 1}, socket_id=sock.socket_id)
    client.trigger(news, "after", {"x": 2})
    event_on(sock, news, "after")
    check(
        not any(m.get("event") == "not-for-me" for m in sock.seen), "socket_id excludes the connection", sock.seen
    )

    channels = client.channels_info(prefix_filter="py-news-")
    check(news in channels.get("channels", {}), "channels_info with prefix_filter", channels)
    channels = client.channels_info(prefix_filter="presence-", attributes=["user_count"])
    check(channels.get("channels", {}).get(room) == {"user_count": 1}, "channels_info user_count", channels)

    info = client.channel_info(news, attributes=["subscription_count"])
    check(info.get("occupied") is True and info.get("subscription_count") == 1, "channel_info", info)
    info = client.channel_info(room, attributes=["user_count"])
    check(info.get("occupied") is True and info.get("user_count") == 1, "channel_info user_count", info)
    info = client.channel_info(f"py-empty-{suffix}")
    check(info.get("occupied") is False, "channel_info of an empty channel", info)

    users = client.users_info(room)
    check(users == {"users": [{"id": "py-user"}]}, "users_info", users)

    wrong = pusher.Pusher(app_id=APP_ID, key=KEY, secret="wrong", host="127.0.0.1", port=port, ssl=False)
    try:
        wrong.trigger(news, "x", {})
    except PusherBadAuth:
        ok("a wrong secret raises PusherBadAuth (401)")
    else:
        raise AssertionError("a wrong secret was accepted")

    sock.send("pusher:unsubscribe", {"channel": room})
    deadline = time.monotonic() + TIMEOUT
    while client.users_info(room).get("users"):
        if time.monotonic() > deadline:
            raise AssertionError("users_info still lists the member after unsubscribe")
        time.sleep(0.1)
    ok("users_info empties after unsubscribe")
    sock.ws.close()
    print("ok: python sdk passed", flush=True)


if __name__ == "__main__":
    main()
