"""Drives Switchboard's Pusher HTTP API with the official Python server SDK (`pusher` 3.3.4).

Usage: pusher-python.py PORT [users]

With `users`, it checks user authentication instead: `authenticate_user` signs a raw
`pusher:signin`, `send_to_user` reaches every connection of the user once, and
`terminate_user_connections` (the SDK posts to `/users/{id}/terminate_connections`, without
`/apps/{id}`) closes them with 4009 while another user's connection stays.

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
from websockets.exceptions import ConnectionClosed
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

    def settle(self, seconds):
        """Reads whatever comes within `seconds` into `seen`."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                self.seen.append(json.loads(self.ws.recv(timeout=left)))
            except TimeoutError:
                return

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


def sign_in(sock, client, user_data, what):
    """Sends `pusher:signin` signed by the SDK's `authenticate_user`; checks `signin_success`."""
    sock.send("pusher:signin", client.authenticate_user(sock.socket_id, user_data))
    answer = sock.expect(lambda m: m.get("event") in ("pusher:signin_success", "pusher:error"), f"{what}: signin answer")
    check(answer["event"] == "pusher:signin_success", f"{what}: pusher:signin_success", answer)
    data = answer["data"]
    data = json.loads(data) if isinstance(data, str) else data
    check(json.loads(data["user_data"]) == user_data, f"{what}: signin_success carries user_data", data)


def expect_closed(sock, code, what):
    """A `pusher:error` with `code`, then a close frame with the same code."""
    error = sock.expect(lambda m: m.get("event") == "pusher:error", f"{what}: pusher:error")
    data = error["data"]
    data = json.loads(data) if isinstance(data, str) else data
    check(data.get("code") == code, f"{what}: pusher:error {code}", error)
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            try:
                sock.ws.recv(timeout=deadline - time.monotonic())
            except TimeoutError:
                continue
    except ConnectionClosed as closed:
        check(closed.rcvd is not None and closed.rcvd.code == code, f"{what}: close {code}", closed.rcvd)
        return
    raise AssertionError(f"{what}: no close within {TIMEOUT} s")


def users(port):
    client = pusher.Pusher(app_id=APP_ID, key=KEY, secret=SECRET, host="127.0.0.1", port=port, ssl=False)
    suffix = str(int(time.time() * 1000))
    alice, bob = f"py-alice-{suffix}", f"py-bob-{suffix}"
    a1, a2, b = Socket(port), Socket(port), Socket(port)
    sign_in(a1, client, {"id": alice, "user_info": {"n": 1}}, "alice 1")
    sign_in(a2, client, {"id": alice}, "alice 2")
    sign_in(b, client, {"id": bob}, "bob")
    # As pusher-js does after signing in.
    for sock, user in ((a1, alice), (a2, alice), (b, bob)):
        answer = sock.subscribe(f"#server-to-user-{user}")
        check(answer["event"] == "pusher_internal:subscription_succeeded", f"{user} subscribes to its own channel", answer)

    client.send_to_user(alice, "note", {"py": 1})
    for sock, who in ((a1, "alice 1"), (a2, "alice 2")):
        check(event_on(sock, f"#server-to-user-{alice}", "note") == {"py": 1}, f"send_to_user reaches {who}")
    client.send_to_user(bob, "note", {"py": 2})
    check(event_on(b, f"#server-to-user-{bob}", "note") == {"py": 2}, "send_to_user reaches bob")
    for sock, who in ((a1, "alice 1"), (a2, "alice 2"), (b, "bob")):
        sock.settle(0.3)
        notes = [m for m in sock.seen if m.get("event") == "note"]
        check(not notes, f"{who}: each note arrives once, to its user only", notes)

    result = client.terminate_user_connections(alice)
    check(result == {} or result is None or isinstance(result, dict), "terminate_user_connections answers", result)
    expect_closed(a1, 4009, "terminate_user_connections: alice 1")
    expect_closed(a2, 4009, "terminate_user_connections: alice 2")
    b.send("pusher:ping", {})
    b.expect(lambda m: m.get("event") == "pusher:pong", "bob's pong")
    ok("bob stays connected")
    b.ws.close()
    print("ok: python sdk users passed", flush=True)


if __name__ == "__main__":
    if sys.argv[2:] == ["users"]:
        users(int(sys.argv[1]))
    else:
        main()
