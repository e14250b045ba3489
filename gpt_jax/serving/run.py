"""Running the server: `serve` in the foreground (the command line's), `BackgroundServer` in a thread (benchmarks,
notebooks, tests). Both use uvicorn on the app of `server.create_app`."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import threading
import time

import uvicorn

from gpt_jax.errors import InputError
from gpt_jax.serving.server import create_app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port: a host that does not resolve is an InputError, an address in use (or not
    allowed) an OSError, both before the model is put into service."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise InputError(f"--host {host!r} does not resolve to an address: {e}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def serve(gen, model_name: str, host: str = "127.0.0.1", port: int = 8000, **options) -> None:
    """Run the server until SIGTERM or Ctrl-C; prints where it listens once the socket is open."""

    class GracefulServer(uvicorn.Server):
        """SIGTERM or Ctrl-C: stop listening, finish the requests in flight, exit with status 0 (a second Ctrl-C
        stops at once)."""

        def handle_exit(self, sig, frame) -> None:
            if not self.should_exit:
                engine = app.state.engine
                print(
                    f"gpt-jax serve: finishing {engine.busy} running and {engine.queued} queued sequences, then "
                    "stopping",
                    file=sys.stderr,
                    flush=True,
                )
            self.force_exit = self.should_exit and sig == signal.SIGINT
            self.should_exit = True

    sock = bind(host, port)
    app = create_app(gen, model_name, **options)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    server = GracefulServer(config)

    async def run():
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started:
            bound = server.servers[0].sockets[0].getsockname()
            print(f"gpt-jax serve: {model_name} on http://{bound[0]}:{bound[1]}/v1", flush=True)
        await task

    asyncio.run(run())


class BackgroundServer:
    """`create_app(gen, model_name, **options)` served on host:port (0: a free port) in a daemon thread until
    `stop()`; `url` is where it listens."""

    def __init__(self, gen, model_name: str = "gpt-jax", host: str = "127.0.0.1", port: int = 0, **options):
        self.app = create_app(gen, model_name, **options)
        self.engine, self.metrics, self.model = self.app.state.engine, self.app.state.metrics, model_name
        config = uvicorn.Config(self.app, host=host, port=port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="gpt-jax-http", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        bound = self.server.servers[0].sockets[0].getsockname()
        self.url = f"http://{bound[0]}:{bound[1]}"

    def stop(self, timeout: float = 120) -> None:
        """Finish the requests in flight, then stop (as SIGTERM does)."""
        self.server.should_exit = True
        self.thread.join(timeout)
