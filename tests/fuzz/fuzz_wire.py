"""atheris (libFuzzer) harness: the wire decoder and the engine's receive path.

Run for a while by hand::

    .venv/bin/python tests/fuzz/fuzz_wire.py -runs=1000000 [corpus_dir]

Every input is split into datagrams (first byte: count) and fed to
``parse_datagram``, ``convert_to_packet`` and to an engine that has a send and a receive under
way. Only :class:`MalformedPacket` may escape the decoder; nothing may
escape the engine. Anything else is a crash libFuzzer reports with the
input that caused it.
"""
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports():
    from ttnet.engine import Engine
    from ttnet.wire import (MalformedPacket, convert_to_packet, encode_data, encode_req,
                            parse_datagram)

PEER = ("10.0.0.9", 9000)


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    engine = Engine()
    engine.send_message(PEER, b"x" * 3000, 0.0, ensure=True)
    engine.datagram_received(encode_req(5, 3), PEER, 0.0)
    engine.datagram_received(encode_data(5, 0, b"d" * 1200), PEER, 0.0)
    now = 0.0
    for _ in range(fdp.ConsumeIntInRange(1, 8)):
        dg = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 1300))
        for decode in (parse_datagram, convert_to_packet):
            try:
                decode(dg)
            except MalformedPacket:
                pass
        now += 0.01
        engine.datagram_received(dg, PEER, now)
        engine.handle_timers(now)
        engine.datagrams_to_send(now)
        engine.pop_events()


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
