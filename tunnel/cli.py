"""`labdesk tunnel`: the desktop tunnel as a process of its own (asyncio, one per host or more)."""

from __future__ import annotations

import asyncio
import logging
import resource
import signal

import click

from broker import runtime
from broker.cli import fails_cleanly
from tunnel.hosts import parse_address
from tunnel.server import TunnelServer


@click.command()
@click.option("--listen", default=None, help="host:port to listen on (default: the tunnel_listen setting).")
@fails_cleanly
def tunnel(listen: str | None) -> None:
    """Run the WebSocket tunnel between browsers and guacd."""
    rt = runtime.current()
    host, port = parse_address(listen or rt.settings.tunnel_listen)
    raise_file_limit()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_until_stopped(TunnelServer(rt.settings, rt), host, port))


async def _until_stopped(server: TunnelServer, host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT; then every session says `disconnect` to guacd and the browser hears
    "going away" (its page reconnects to another tunnel process) before the process exits."""
    serving = asyncio.ensure_future(server.serve(host, port))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, serving.cancel)
    try:
        await serving
    except asyncio.CancelledError:
        pass


def raise_file_limit() -> int:
    """Each session holds two sockets: lift the soft descriptor limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard
