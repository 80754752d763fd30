"""LabDesk's side of guacd's handshake, over real TCP against the guacd double (tests/support/guacd_double.py).

The expected positions of parameters come from guacd 1.6.0's own argument order (vnc: hostname, port,
read-only, ..., username, password; ssh: hostname, host-key, port, timeout, username, password), so a client
that ignored `args` and sent values in its own order would fail here.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Callable

import pytest

from tests.support.guacd_double import GuacdDouble
from tunnel.guacd import ClientInfo, GuacdConnection, HandshakeError, answer_syncs, connect
from tunnel.protocol import Instruction, InstructionReader

Start = Callable[..., GuacdDouble]
LEARNER = ClientInfo(width=1280, height=720, dpi=96, timezone="Europe/Berlin", name="Ada")
VNC_PARAMS = {"hostname": "10.1.2.3", "port": "5901", "password": "pa;ss,wö.rd", "read-only": "true"}


def run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine)


async def _open(guacd: GuacdDouble, select: str = "vnc", params: dict[str, str] | None = None,
                client: ClientInfo = LEARNER) -> GuacdConnection:
    return await connect(guacd.address, select, params if params is not None else VNC_PARAMS, client, timeout=5)


async def _open_and_close(guacd: GuacdDouble, select: str = "vnc", params: dict[str, str] | None = None,
                          client: ClientInfo = LEARNER) -> GuacdConnection:
    connection = await _open(guacd, select, params, client)
    await connection.close()
    return connection


def test_labdesk_sends_the_exact_handshake_with_params_at_guacds_positions(guacd_double: GuacdDouble) -> None:
    connection = run(_open_and_close(guacd_double))
    record = guacd_double.wait_for_connection()
    opcodes = [opcode for opcode, _ in record.handshake]
    assert opcodes == ["select", "size", "audio", "video", "image", "timezone", "name", "connect"]
    assert record.handshake[:7] == [
        ("select", ("vnc",)),
        ("size", ("1280", "720", "96")),
        ("audio", ()),
        ("video", ()),
        ("image", ("image/png", "image/jpeg", "image/webp")),
        ("timezone", ("Europe/Berlin",)),
        ("name", ("Ada",)),
    ]
    values = record.handshake[7][1]
    assert values[0] == "VERSION_1_5_0"
    assert values[1:4] == ("10.1.2.3", "5901", "true")  # hostname, port, read-only
    assert values[6:8] == ("", "pa;ss,wö.rd")  # username (empty), password
    assert [index for index, value in enumerate(values[1:]) if value] == [0, 1, 2, 6]
    assert record.params == {**dict.fromkeys(record.params, ""), **VNC_PARAMS}
    assert connection.version == "VERSION_1_5_0"


def test_the_connection_id_comes_from_ready(start_guacd_double: Start) -> None:
    guacd = start_guacd_double()
    first = run(_open_and_close(guacd))
    second = run(_open_and_close(guacd))
    records = [guacd.wait_for_connection(0), guacd.wait_for_connection(1)]
    assert [first.connection_id, second.connection_id] == [record.id for record in records]
    assert first.connection_id.startswith("$") and first.connection_id != second.connection_id


def test_a_newer_guacd_is_spoken_to_in_1_5_0(start_guacd_double: Start) -> None:
    guacd = start_guacd_double(version="VERSION_1_6_0")
    assert run(_open_and_close(guacd)).version == "VERSION_1_5_0"
    assert guacd.wait_for_connection().client_version == "VERSION_1_5_0"


@pytest.mark.parametrize("version, named", [("VERSION_1_3_0", "VERSION_1_3_0"), (None, "no protocol version")])
def test_a_guacd_older_than_1_5_is_refused(start_guacd_double: Start, version: str | None, named: str) -> None:
    guacd = start_guacd_double(version=version)
    with pytest.raises(HandshakeError, match="VERSION_1_5_0") as refused:
        run(_open(guacd))
    assert named in str(refused.value)
    guacd.wait_for(lambda: guacd.connections and guacd.connections[0].closed)
    assert [opcode for opcode, _ in guacd.connections[0].handshake] == ["select"]  # never sent `connect`


def test_an_error_during_the_handshake_surfaces_guacds_message_and_status(start_guacd_double: Start) -> None:
    guacd = start_guacd_double(fail_connect=("Upstream server refused; try later.", 0x0207))
    with pytest.raises(HandshakeError, match="Upstream server refused; try later.") as refused:
        run(_open(guacd))
    assert refused.value.status == 0x0207


def test_an_unreachable_guacd_is_status_0x0207() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = probe.getsockname()
    with pytest.raises(HandshakeError, match="unreachable") as refused:
        run(connect(address, "vnc", {}, LEARNER, timeout=5))
    assert refused.value.status == 0x0207


def test_answer_syncs_answers_every_sync(guacd_double: GuacdDouble) -> None:
    async def session() -> list[Instruction]:
        connection = await _open(guacd_double)
        seen = await answer_syncs(connection, 1.1)
        await connection.close()
        return seen

    seen = run(session())
    record = guacd_double.wait_for_connection()
    guacd_double.wait_for(lambda: record.closed)
    received_syncs = [instruction.args[0] for instruction in seen if instruction.opcode == "sync"]
    assert len(received_syncs) >= 5  # the first frame's, then one every 0.2 s
    assert record.sync_replies == received_syncs
    assert record.sync_replies == record.syncs_sent[: len(record.sync_replies)]


def test_answering_syncs_keeps_a_client_alive_while_a_silent_one_is_dropped(start_guacd_double: Start) -> None:
    guacd = start_guacd_double(sync_interval=0.25, silence_timeout=1.5)

    async def answering() -> None:
        connection = await _open(guacd)
        await answer_syncs(connection, 2.6)
        await connection.close()

    async def silent() -> list[Instruction]:
        connection = await _open(guacd, client=ClientInfo(name="Silent"))
        await asyncio.sleep(2.6)
        data = await asyncio.wait_for(connection.reader.read(), 1)  # to the end: guacd closed it
        connection.writer.close()
        return connection.instructions.feed(data)

    async def both() -> list[Instruction]:
        return (await asyncio.gather(answering(), silent()))[1]

    silent_saw = run(both())
    guacd.wait_for(lambda: all(record.closed for record in guacd.connections))
    by_name = {dict(record.handshake)["name"][0]: record for record in guacd.connections}
    assert by_name["Ada"].dropped_for_silence is False and by_name["Ada"].clean_disconnect is True
    assert by_name["Silent"].dropped_for_silence is True and by_name["Silent"].sync_replies == []
    errors = [instruction.args for instruction in silent_saw if instruction.opcode == "error"]
    assert errors == [("User is not responding.", "776")]


def test_close_is_a_clean_disconnect_and_a_bare_close_is_not(guacd_double: GuacdDouble) -> None:
    async def bare_close() -> None:
        connection = await _open(guacd_double)
        connection.writer.close()
        await connection.writer.wait_closed()

    run(_open_and_close(guacd_double))
    run(bare_close())
    guacd_double.wait_for(lambda: len(guacd_double.connections) == 2 and all(r.closed for r in guacd_double.connections))
    assert [record.clean_disconnect for record in guacd_double.connections] == [True, False]


def test_a_title_with_separators_and_multibyte_arrives_intact(start_guacd_double: Start) -> None:
    title = "Lab 1; step 2, v3.1 — Ünïcødé 日本語 🖥️"
    guacd = start_guacd_double(title=title, sync_interval=0.2)

    async def session() -> list[Instruction]:
        connection = await _open(guacd)
        seen = await answer_syncs(connection, 0.5)
        await connection.close()
        return seen

    seen = run(session())
    assert [instruction.args for instruction in seen if instruction.opcode == "name"] == [(title,)]
    opcodes = [instruction.opcode for instruction in seen]
    assert opcodes[:3] == ["name", "size", "img"] and "end" in opcodes and "sync" in opcodes  # reading went on


def test_ssh_gets_ssh_arguments_and_params_land_at_their_positions(guacd_double: GuacdDouble) -> None:
    params = {"hostname": "lab-7.internal", "port": "22", "username": "learner", "password": "x;y",
              "command": "exec /usr/bin/screen -xRR"}
    run(_open_and_close(guacd_double, "ssh", params))
    record = guacd_double.wait_for_connection()
    values = record.handshake[-1][1]
    assert record.protocol == "ssh"
    # hostname, host-key, port, timeout, username, password
    assert values[1:7] == ("lab-7.internal", "", "22", "", "learner", "x;y")
    assert record.params["command"] == "exec /usr/bin/screen -xRR"
    assert sum(1 for value in values[1:] if value) == len(params)
    assert "font-name" in record.params and "read-only" in record.params and "encodings" not in record.params


def test_an_instructor_joins_a_live_connection_read_only(guacd_double: GuacdDouble) -> None:
    async def session() -> tuple[GuacdConnection, GuacdConnection, list[Instruction]]:
        owner = await _open(guacd_double)
        joiner = await _open(guacd_double, owner.connection_id, {"read-only": "true"}, ClientInfo(name="Prof"))
        seen = await answer_syncs(joiner, 0.3)
        await joiner.close()
        await owner.close()
        return owner, joiner, seen

    owner, joiner, seen = run(session())
    record = guacd_double.wait_for_connection(1)
    assert joiner.connection_id == owner.connection_id
    assert record.joined and record.protocol == "vnc" and record.handshake[0] == ("select", (owner.connection_id,))
    assert record.params["read-only"] == "true" and record.params["hostname"] == ""
    assert {"img", "blob", "end", "sync"} <= {instruction.opcode for instruction in seen}


def test_joining_an_unknown_connection_is_refused(guacd_double: GuacdDouble) -> None:
    with pytest.raises(HandshakeError, match="No such connection.") as refused:
        run(_open(guacd_double, "$00000000-0000-0000-0000-000000000000", {}))
    assert refused.value.status == 0x0204
