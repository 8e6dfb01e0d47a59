"""Interop check run by `cargo xtask test`: pywebpush (the app-server library most Python
app servers use) pushes to a simplepush server, and a browser-like WebPush device made of
`websockets` and `http_ece` (the decryption pywebpush's own ecosystem uses) receives and
decrypts each message. Exits non-zero at the first mismatch.

Usage: python3 pywebpush_check.py ws://HOST:PORT/
"""

import asyncio
import base64
import json
import os
import sys
import uuid

import http_ece
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid
from pywebpush import WebPushException, webpush


def b64u(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def point(public_key) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def param(header: str, name: str) -> bytes:
    """A `name=value` parameter of an Encryption or Crypto-Key header value."""
    for part in header.replace(",", ";").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return unb64u(value.strip('"'))
    raise AssertionError(f"no {name} in {header!r}")


def decrypt(frame: dict, private_key, auth: bytes) -> bytes:
    data = unb64u(frame["data"])
    headers = frame["headers"]
    if headers["encoding"] == "aes128gcm":
        return http_ece.decrypt(
            data, private_key=private_key, auth_secret=auth, version="aes128gcm"
        )
    return http_ece.decrypt(
        data,
        private_key=private_key,
        auth_secret=auth,
        salt=param(headers["encryption"], "salt"),
        dh=param(headers["crypto_key"], "dh"),
        version="aesgcm",
    )


def check(condition: bool, what: str) -> None:
    print(("ok   " if condition else "FAIL ") + what, flush=True)
    if not condition:
        sys.exit(1)


async def main(ws_url: str) -> None:
    device_key = ec.generate_private_key(ec.SECP256R1())
    auth = os.urandom(16)
    vapid = Vapid()
    vapid.generate_keys()
    claims = {"sub": "mailto:interop@example.com"}
    async with websockets.connect(ws_url) as ws:
        await ws.send(
            json.dumps({"messageType": "hello", "broadcasts": {}, "use_webpush": True})
        )
        hello = json.loads(await asyncio.wait_for(ws.recv(), 5))
        check(hello.get("use_webpush") is True and hello.get("status") == 200, "hello")
        for key in (None, b64u(point(vapid.public_key))):
            register = {"messageType": "register", "channelID": str(uuid.uuid4())}
            if key:
                register["key"] = key
            await ws.send(json.dumps(register))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
            form = "v2" if key else "v1"
            check(f"/wpush/{form}/" in reply["pushEndpoint"], f"register {form}")
            subscription = {
                "endpoint": reply["pushEndpoint"],
                "keys": {"p256dh": b64u(point(device_key.public_key())), "auth": b64u(auth)},
            }
            for encoding in ("aes128gcm", "aesgcm"):
                text = f"interop {form} {encoding} " + "é" * 100
                response = webpush(
                    subscription,
                    text,
                    vapid_private_key=vapid,
                    vapid_claims=dict(claims),
                    content_encoding=encoding,
                    ttl=60,
                )
                check(response.status_code == 201, f"{form} {encoding} push: 201")
                check("/m/" in response.headers.get("Location", ""), "Location /m/")
                frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
                check(decrypt(frame, device_key, auth).decode() == text, f"{form} {encoding} decrypted")
                ack = {"channelID": frame["channelID"], "version": frame["version"], "code": 100}
                await ws.send(json.dumps({"messageType": "ack", "updates": [ack]}))
        other = Vapid()
        other.generate_keys()
        try:
            webpush(subscription, "x", vapid_private_key=other, vapid_claims=dict(claims), ttl=60)
            check(False, "v2 push signed with another key refused")
        except WebPushException as error:
            status = error.response.status_code if error.response is not None else None
            check(status == 403, f"v2 push signed with another key: 403 (got {status})")
    print("pywebpush interop: all passed")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
