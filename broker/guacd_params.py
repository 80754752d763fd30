"""The guacd connection parameters for a lab's endpoint: what the tunnel puts in `connect`.

Built on the server from the sealed endpoint and the token's read-only flag only. The browser chooses
nothing here but a keyboard layout from a fixed list, so it can never point guacd at another host or
port, nor lift read-only.
"""

from __future__ import annotations

from broker.connector import DesktopEndpoint

PROTOCOLS = ("vnc", "rdp", "ssh", "telnet")

# guacd's RDP `server-layout` names: the layouts a learner may pick on the lab page.
LAYOUTS = (
    "en-us-qwerty", "en-gb-qwerty", "de-de-qwertz", "de-ch-qwertz", "fr-fr-azerty", "fr-be-azerty",
    "fr-ch-qwertz", "es-es-qwerty", "es-latam-qwerty", "it-it-qwerty", "pt-br-qwerty", "pt-pt-qwerty",
    "sv-se-qwerty", "da-dk-qwerty", "no-no-qwerty", "fi-fi-qwerty", "hu-hu-qwertz", "ja-jp-qwerty",
    "tr-tr-qwerty", "failsafe",
)

# What each protocol needs beyond host, port and credentials.
_DEFAULTS: dict[str, dict[str, str]] = {
    "vnc": {},
    "rdp": {"security": "any", "ignore-cert": "true", "resize-method": "display-update"},
    "ssh": {"terminal-type": "xterm-256color", "server-alive-interval": "30"},
    "telnet": {"terminal-type": "xterm-256color"},
}


def connection_params(endpoint: DesktopEndpoint, read_only: bool, layout: str = "") -> dict[str, str]:
    """guacd argument name → value; arguments guacd asks for that are not here are sent empty."""
    if endpoint.protocol not in PROTOCOLS:
        raise ValueError(f"unsupported desktop protocol {endpoint.protocol!r}")
    params = {**_DEFAULTS[endpoint.protocol], **endpoint.extra}
    params.update(hostname=endpoint.host, port=str(endpoint.port))
    if endpoint.username:
        params["username"] = endpoint.username
    if endpoint.password:
        params["password"] = endpoint.password
    if endpoint.protocol == "rdp" and layout in LAYOUTS:
        params["server-layout"] = layout
    if read_only:
        params["read-only"] = "true"
    return params
