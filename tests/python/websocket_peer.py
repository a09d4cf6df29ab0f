"""Both ends of a WebSocket through Tollgate, with the `websockets` library users use.

    websocket_peer.py serve PORT        an echo server on 127.0.0.1:PORT (a message "close" closes
                                        the connection with 1000); runs until killed
    websocket_peer.py call < scenario   a client; prints one JSON document

Scenario members: url, key (sent as Authorization: Bearer), messages (texts to send, each
echo awaited), wait_close (seconds to wait for the server's close frame after the messages).
The client reports the echoes, or the refusal (status and body) when the upgrade is refused, and
the close code and reason when the connection was closed.
"""

import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed, InvalidStatus


async def echo(ws):
    async for message in ws:
        if message == "close":
            await ws.close(1000, "asked to")
            return
        await ws.send(message)


async def run_server(port):
    async with serve(echo, "127.0.0.1", port):
        print("listening", flush=True)
        await asyncio.Future()


async def call(s):
    out = {"echoes": []}
    headers = {"Authorization": "Bearer " + s["key"]} if s.get("key") else {}
    try:
        async with connect(s["url"], additional_headers=headers, open_timeout=10) as ws:
            for message in s.get("messages", []):
                await ws.send(message)
                out["echoes"].append(await asyncio.wait_for(ws.recv(), 10))
            if s.get("wait_close"):
                try:
                    await asyncio.wait_for(ws.recv(), s["wait_close"])
                except ConnectionClosed:
                    pass
            out["close_code"] = ws.close_code
            out["close_reason"] = ws.close_reason
    except InvalidStatus as e:
        out["status"] = e.response.status_code
        try:
            out["body"] = json.loads(e.response.body or b"null")
        except ValueError:
            out["body"] = (e.response.body or b"").decode(errors="replace")
        out["content_type"] = e.response.headers.get("content-type")
    except ConnectionClosed as e:
        out["close_code"] = e.rcvd.code if e.rcvd else None
        out["close_reason"] = e.rcvd.reason if e.rcvd else None
    print(json.dumps(out))


def main():
    if sys.argv[1] == "serve":
        asyncio.run(run_server(int(sys.argv[2])))
    else:
        asyncio.run(call(json.load(sys.stdin)))


if __name__ == "__main__":
    main()
