"""TTPython's documented network API, name by name.

The reference is TTPython's own documentation of its network module
(``ticktalkpython.Network``, ``.NetworkInterfaceUDP``,
``.NetworkInterfaceSim``). Each row of ``DOCUMENTED`` is one documented
signature: the ttnet module that stands in for the TTPython module, the
name, and the documented parameters in order with their documented
defaults. The tests check that

- every documented parameter exists under its documented name, in the
  documented order, with the documented default (ttnet may add a default
  to a required parameter, and its own extras only after the documented
  ones and always with a default);
- every documented constructor and method can be called by keyword with
  the documented names, and the documented attributes exist afterwards;
- every documented callback gets what TTPython gives it: ``after(msg)``
  and ``completion_fn(msg)`` the message, ``receiver_function(msg)`` the
  received message (``payload``, sender address), ``wrap_completion``'s
  ``callback(msg)``.
"""
from __future__ import annotations

import inspect
import socket
import threading
from typing import Any

import pytest
import simpy

import ttnet
from ttnet import network as ttnet_network
from ttnet import sim as ttnet_sim
from ttnet import udp as ttnet_udp

REQUIRED = inspect.Parameter.empty
#: A documented default that is a function (TTPython's logging lambdas):
#: ttnet may use None or any callable there.
CALLBACK = object()

#: TTPython module -> the ttnet module that stands in for it.
MODULES = {"Network": ttnet_network, "NetworkInterfaceUDP": ttnet_udp,
           "NetworkInterfaceSim": ttnet_sim}

#: (TTPython module, "Class.method" or "function", [(param, default), ...])
DOCUMENTED: list[tuple[str, str, list[tuple[str, Any]]]] = [
    # ticktalkpython.Network
    ("Network", "TTNetwork", [("ensemble_name", REQUIRED), ("interface_type", REQUIRED),
                              ("sim", None), ("ip_addr", None), ("port", None),
                              ("receiver_function", None)]),
    ("Network", "TTNetwork.add_route", [("recipient_ensemble_name", REQUIRED),
                                        ("recipient_address", REQUIRED)]),
    ("Network", "TTNetwork.create_message", [("recipient_name", REQUIRED), ("obj", REQUIRED)]),
    ("Network", "TTNetwork.get_recipient_address", [("recipient_ensemble_name", REQUIRED)]),
    ("Network", "TTNetwork.send_message", [("message", REQUIRED), ("ensure", False)]),
    ("Network", "TTNetwork.update_route", [("recipient_ensemble_name", REQUIRED),
                                           ("recipient_address", REQUIRED)]),
    # ticktalkpython.NetworkInterfaceUDP
    ("NetworkInterfaceUDP", "TTAckPacket", [("message_id", REQUIRED), ("sequence_num", REQUIRED)]),
    ("NetworkInterfaceUDP", "TTAckPacket.send", [("server_socket", REQUIRED),
                                                 ("address", REQUIRED)]),
    ("NetworkInterfaceUDP", "TTDataPacket", [("message_id", 0), ("sequence_num", 0),
                                             ("payload", None), ("ACKed", False)]),
    ("NetworkInterfaceUDP", "TTDataPacket.send", [("server_socket", REQUIRED),
                                                  ("address", REQUIRED)]),
    ("NetworkInterfaceUDP", "TTNetworkInterfaceUDP", [
        ("ensembles", None), ("ip_addr", "127.0.0.1"), ("port", 8225), ("timeout_ms", 100),
        ("receiver_function", CALLBACK)]),
    ("NetworkInterfaceUDP", "TTNetworkInterfaceUDP.create_receiving_window", [
        ("address", REQUIRED), ("request_packet", REQUIRED)]),
    ("NetworkInterfaceUDP", "TTNetworkInterfaceUDP.create_sending_window", [
        ("message", REQUIRED), ("after", REQUIRED)]),
    ("NetworkInterfaceUDP", "TTNetworkInterfaceUDP.ensure_handshake", [
        ("req_message", REQUIRED), ("address", REQUIRED)]),
    ("NetworkInterfaceUDP", "TTNetworkInterfaceUDP.get_receiving_window", [
        ("address", REQUIRED), ("message_id", REQUIRED)]),
    ("NetworkInterfaceUDP", "TTNetworkInterfaceUDP.get_sending_window", [
        ("dest_address", REQUIRED), ("message_id", REQUIRED)]),
    ("NetworkInterfaceUDP", "TTNetworkInterfaceUDP.handshake", []),
    ("NetworkInterfaceUDP", "TTNetworkInterfaceUDP.listen", []),
    ("NetworkInterfaceUDP", "TTNetworkInterfaceUDP.send", [
        ("message", REQUIRED), ("after", CALLBACK), ("ensure", False)]),
    ("NetworkInterfaceUDP", "TTNetworkInterfaceUDP.terminate_handshake", [
        ("message_id", REQUIRED), ("address", REQUIRED)]),
    ("NetworkInterfaceUDP", "TTNetworkInterfaceUDP.wrap_completion", [
        ("msg", REQUIRED), ("message_dict", REQUIRED), ("message_id", REQUIRED),
        ("callback", REQUIRED)]),
    ("NetworkInterfaceUDP", "TTNetworkMessageUDP", [
        ("recipient_ip", "127.0.0.1"), ("recipient_port", 8080), ("payload_byte_array", None)]),
    ("NetworkInterfaceUDP", "TTNetworkMessageUDP.generate_packets", [("window_size", REQUIRED)]),
    ("NetworkInterfaceUDP", "TTNetworkMessageUDP.get_address", []),
    ("NetworkInterfaceUDP", "TTNetworkMessageUDP.get_request", []),
    ("NetworkInterfaceUDP", "TTPacket", [("packet_type", REQUIRED), ("message_id", REQUIRED)]),
    ("NetworkInterfaceUDP", "TTPacket.send", [("server_socket", REQUIRED), ("address", REQUIRED)]),
    ("NetworkInterfaceUDP", "TTRequestPacket", [("message_id", REQUIRED),
                                                ("num_packets", REQUIRED)]),
    ("NetworkInterfaceUDP", "TTSlidingWindow", [
        ("window_size", 1000), ("timeout_ms", 100), ("completion_fn", CALLBACK),
        ("initializer", None)]),
    ("NetworkInterfaceUDP", "TTSlidingWindow.ack", [
        ("ack_packet", REQUIRED), ("server_socket", REQUIRED), ("address", REQUIRED)]),
    ("NetworkInterfaceUDP", "TTSlidingWindow.get_packet_index", [
        ("sequence_number", REQUIRED)]),
    ("NetworkInterfaceUDP", "TTSlidingWindow.is_in_window", [("sequence_number", REQUIRED)]),
    ("NetworkInterfaceUDP", "TTSlidingWindow.print_window", []),
    ("NetworkInterfaceUDP", "TTSlidingWindow.receive", [
        ("data_packet", REQUIRED), ("server_socket", REQUIRED), ("address", REQUIRED)]),
    ("NetworkInterfaceUDP", "TTSlidingWindow.slide", [
        ("server_socket", REQUIRED), ("address", REQUIRED)]),
    ("NetworkInterfaceUDP", "TTSlidingWindow.start", [
        ("server_socket", REQUIRED), ("address", REQUIRED), ("timeout", REQUIRED)]),
    ("NetworkInterfaceUDP", "convert_to_packet", [("payload", REQUIRED)]),
    ("NetworkInterfaceUDP", "convert_to_payload", [("packet", REQUIRED)]),
    ("NetworkInterfaceUDP", "message", [
        ("obj", REQUIRED), ("recipient_ip", "127.0.0.1"), ("recipient_port", 8080)]),
    # ticktalkpython.NetworkInterfaceSim
    ("NetworkInterfaceSim", "TTNetworkInterfaceSim", [("sim", REQUIRED)]),
    ("NetworkInterfaceSim", "TTNetworkInterfaceSim.listen", []),
    ("NetworkInterfaceSim", "TTNetworkInterfaceSim.send", [("message", REQUIRED),
                                                           ("ensure", False)]),
    ("NetworkInterfaceSim", "TTNetworkMessageSim", [("recipient", REQUIRED),
                                                    ("payload", REQUIRED)]),
]

#: Documented names that are classes without a documented signature of
#: their own (an Enum, an exception).
DOCUMENTED_NAMES = [("NetworkInterfaceUDP", "TTPacketType"),
                    ("NetworkInterfaceUDP", "WindowException")]


def _resolve(module: str, name: str) -> Any:
    obj: Any = MODULES[module]
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _parameters(obj: Any) -> list[inspect.Parameter]:
    sig = inspect.signature(obj.__init__ if inspect.isclass(obj) else obj)
    params = list(sig.parameters.values())
    if params and params[0].name == "self":
        params = params[1:]
    return params


@pytest.mark.parametrize("module,name,documented", DOCUMENTED,
                         ids=[f"{m}.{n}" for m, n, _ in DOCUMENTED])
def test_documented_signature(module, name, documented):
    params = _parameters(_resolve(module, name))
    positional = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.POSITIONAL_ONLY)]
    names = [p.name for p in positional[:len(documented)]]
    assert names == [d for d, _ in documented], f"{name}: parameters {names}"
    for p, (pname, default) in zip(positional, documented):
        assert p.kind is p.POSITIONAL_OR_KEYWORD, f"{name}({pname}) must be usable by keyword"
        if default is CALLBACK:
            assert p.default is None or callable(p.default), f"{name}({pname})"
        elif default is not REQUIRED:
            assert p.default == default and type(p.default) is type(default), \
                f"{name}({pname}) default {p.default!r}, documented {default!r}"
    for p in params:
        if p.name not in dict(documented) and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            assert p.default is not REQUIRED, f"{name}: ttnet extra {p.name!r} needs a default"


@pytest.mark.parametrize("module,name", DOCUMENTED_NAMES)
def test_documented_names_exist(module, name):
    assert inspect.isclass(_resolve(module, name))


def test_every_documented_name_is_exported_from_ttnet_too():
    for module, name, _ in DOCUMENTED:
        top = name.split(".")[0]
        assert getattr(ttnet, top) is getattr(MODULES[module], top)


def test_packet_type_is_ttpythons_enum():
    PT = ttnet.TTPacketType
    assert PT(value=1) is PT.DATA
    assert [(m.name, m.value) for m in PT] == [("REQ", 0), ("DATA", 1), ("ACK", 2)]
    assert issubclass(ttnet.WindowException, Exception)


# --------------------------------------------- calls by keyword, attributes
def test_packets_by_keyword_with_documented_attributes():
    PT = ttnet.TTPacketType
    base = ttnet.TTPacket(packet_type=PT.REQ, message_id=4)
    assert (base.packet_type, base.message_id) == (PT.REQ, 4)
    data = ttnet.TTDataPacket(message_id=1, sequence_num=2, payload=b"abc", ACKed=True)
    assert (data.packet_type, data.message_id, data.sequence_num) == (PT.DATA, 1, 2)
    assert data.payload == b"abc" and data.ACKed is True
    empty = ttnet.TTDataPacket()
    assert (empty.message_id, empty.sequence_num, bytes(empty.payload), empty.ACKed) == (
        0, 0, b"", False)
    ack = ttnet.TTAckPacket(message_id=7, sequence_num=3)
    assert (ack.packet_type, ack.message_id, ack.sequence_num) == (PT.ACK, 7, 3)
    req = ttnet.TTRequestPacket(message_id=9, num_packets=5)
    assert (req.packet_type, req.message_id, req.num_packets) == (PT.REQ, 9, 5)
    for pkt in (data, ack, req):
        raw = ttnet.convert_to_payload(packet=pkt)
        back = ttnet.convert_to_packet(payload=raw)
        assert back == pkt
    # TTPython's DATA payload is a bytearray
    assert ttnet.convert_to_packet(
        ttnet.TTDataPacket(1, 2, bytearray(b"xy")).to_bytes()).payload == b"xy"


def test_packet_send_by_keyword(udp_port):
    port = udp_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", port))
        rx.settimeout(2)
        for pkt in (ttnet.TTAckPacket(1, 2), ttnet.TTDataPacket(1, 2, b"x"),
                    ttnet.TTRequestPacket(1, 2)):
            pkt.send(server_socket=tx, address=("127.0.0.1", port))
            assert ttnet.convert_to_packet(rx.recv(2000)) == pkt


def test_udp_message_by_keyword():
    m = ttnet.TTNetworkMessageUDP(recipient_ip="127.0.0.1", recipient_port=9000,
                                  payload_byte_array=bytearray(b"x" * 2500))
    assert (m.recipient_ip, m.recipient_port, bytes(m.payload)) == ("127.0.0.1", 9000, b"x" * 2500)
    assert m.get_address() == ("127.0.0.1", 9000) and isinstance(m.message_id, int)
    req = m.get_request()
    assert req.num_packets == 3 and req.message_id == m.message_id
    pkts = m.generate_packets(window_size=1000)
    assert [p.sequence_num for p in pkts] == [0, 1, 2]
    assert all(p.message_id == m.message_id for p in pkts)
    d = ttnet.TTNetworkMessageUDP()
    assert d.get_address() == ("127.0.0.1", 8080) and bytes(d.payload) == b""
    h = ttnet.message(obj={"a": 1})
    assert h.get_address() == ("127.0.0.1", 8080)
    h = ttnet.message(obj=1, recipient_ip="127.0.0.2", recipient_port=9001)
    assert h.get_address() == ("127.0.0.2", 9001)


def test_network_routes_by_keyword(udp_port):
    net = ttnet.TTNetwork(ensemble_name="a", interface_type=ttnet.TTNetworkInterfaceType.UDP_IP,
                          sim=None, ip_addr="127.0.0.1", port=udp_port(),
                          receiver_function=None)
    try:
        assert net.ensemble_name == "a"
        assert net.interface_type is ttnet.TTNetworkInterfaceType.UDP_IP
        net.add_route(recipient_ensemble_name="b", recipient_address="127.0.0.1:9100")
        assert net.get_recipient_address(recipient_ensemble_name="b") == ("127.0.0.1", 9100)
        net.update_route(recipient_ensemble_name="b", recipient_address="127.0.0.1:9101")
        msg = net.create_message(recipient_name="b", obj=[1, 2])
        assert msg.get_address() == ("127.0.0.1", 9101)
        assert net.routing_table == {"b": ("127.0.0.1", 9101)}
        assert net.network_interface is net.interface
        h = net.send_message(message=msg, ensure=False)
        assert h is not None
    finally:
        net.close()


def test_udp_interface_by_keyword(udp_port):
    port = udp_port()
    iface = ttnet.TTNetworkInterfaceUDP(ensembles=None, ip_addr="127.0.0.1", port=port,
                                        timeout_ms=50, receiver_function=None)
    try:
        assert (iface.ensembles, iface.ip_addr, iface.port, iface.timeout_ms) == (
            None, "127.0.0.1", port, 50)
        assert iface.receiver_function is None and iface.listen() is None
        msg = ttnet.TTNetworkMessageUDP("127.0.0.1", udp_port(), b"x" * 3000)
        w = iface.create_sending_window(message=msg, after=lambda m: None)
        assert isinstance(w, ttnet.TTSlidingWindow) and w.total == 3 and w.initializer is msg
        req = ttnet.TTRequestPacket(message_id=5, num_packets=2)
        r = iface.create_receiving_window(address=("127.0.0.1", 9000), request_packet=req)
        assert isinstance(r, ttnet.TTSlidingWindow) and r.total == 2
        assert iface.get_receiving_window(address=("127.0.0.1", 9000), message_id=5) is None
        assert iface.get_sending_window(dest_address=("127.0.0.1", 9000), message_id=5) is None
        assert iface.ensure_handshake(req_message=req, address=("127.0.0.1", 9000)) is None
        assert iface.handshake() is None
        assert iface.terminate_handshake(message_id=5, address=("127.0.0.1", 9000)) is None
        h = iface.send(message=msg, after=lambda m: None, ensure=False)
        assert isinstance(h, ttnet.SendHandle)
    finally:
        iface.cleanup()


def test_sliding_window_by_keyword(udp_port):
    msg = ttnet.TTNetworkMessageUDP("127.0.0.1", udp_port(), b"y" * 2500)
    done: list[Any] = []
    w = ttnet.TTSlidingWindow(window_size=2, timeout_ms=50, completion_fn=done.append,
                              initializer=msg)
    assert (w.window_size, w.timeout_ms, w.completion_fn, w.initializer) == (
        2, 50, done.append, msg)
    assert w.is_in_window(sequence_number=0) and not w.is_in_window(sequence_number=2)
    assert w.get_packet_index(sequence_number=1) == 1
    assert "base=0" in w.print_window()
    port = msg.recipient_port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", port))
        rx.settimeout(2)
        addr = ("127.0.0.1", port)
        w.start(server_socket=tx, address=addr, timeout=50)
        first = [ttnet.convert_to_packet(rx.recv(2000)) for _ in range(2)]
        assert [p.sequence_num for p in first] == [0, 1]           # one window's worth
        w.ack(ack_packet=ttnet.TTAckPacket(msg.message_id, 0), server_socket=tx, address=addr)
        assert ttnet.convert_to_packet(rx.recv(2000)).sequence_num == 2   # slid in, sent
        assert w.slide(server_socket=tx, address=addr) == 0
        w.ack(ttnet.TTAckPacket(msg.message_id, 1), tx, addr)
        w.ack(ttnet.TTAckPacket(msg.message_id, 2), tx, addr)
    assert done == [msg]                        # completion_fn(the sent message)

    got: list[Any] = []
    req = ttnet.TTRequestPacket(message_id=11, num_packets=2)
    rw = ttnet.TTSlidingWindow(window_size=4, completion_fn=got.append, initializer=req)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(2)
        src = rx.getsockname()
        rw.receive(data_packet=ttnet.TTDataPacket(11, 1, b"B"), server_socket=tx, address=src)
        assert ttnet.convert_to_packet(rx.recv(2000)) == ttnet.TTAckPacket(11, 1)
        rw.receive(ttnet.TTDataPacket(11, 0, b"A" * 1200), tx, src)
    assert len(got) == 1                        # completion_fn(the assembled message)
    m = got[0]
    assert bytes(m.payload) == b"A" * 1200 + b"B" and m.message_id == 11
    assert m.get_address() == src and (m.recipient_ip, m.recipient_port) == src


def test_simulated_interface_by_keyword():
    env = simpy.Environment()

    class Ensemble:
        def __init__(self) -> None:
            self.got: list[Any] = []

        def receive_network_message(self, message: Any) -> None:
            self.got.append(message)

    ens = Ensemble()
    iface = ttnet.TTNetworkInterfaceSim(sim=env)
    assert iface.sim is env and iface.listen() is None
    m = ttnet.TTNetworkMessageSim(recipient=ens, payload={"token": 1})
    assert m.recipient is ens and m.payload == {"token": 1}
    iface.send(message=m, ensure=True)
    iface.send(m, True)                                  # TTPython's positional order
    env.run()
    # TTPython hands the ensemble the message itself, not its payload
    assert ens.got == [m, m]


# ------------------------------------------------------------ callbacks
class Recorder:
    """Collects callback arguments; ``wait`` for a count (UDP callbacks run
    on the dispatcher thread)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self._cv = threading.Condition()

    def __call__(self, *args: Any) -> None:
        with self._cv:
            self.calls.append(args)
            self._cv.notify_all()

    def wait(self, n: int = 1, timeout: float = 5.0) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: len(self.calls) >= n, timeout)


@pytest.fixture
def udp_pair(udp_port):
    got = Recorder()
    b = ttnet.TTNetworkInterfaceUDP(port=udp_port(), receiver_function=got)
    a = ttnet.TTNetworkInterfaceUDP(port=udp_port())
    yield a, b, got
    a.cleanup()
    b.cleanup()


def test_udp_after_gets_the_sent_message(udp_pair):
    a, b, got = udp_pair
    msg = ttnet.TTNetworkMessageUDP("127.0.0.1", b.port, b"hello")
    sent = Recorder()
    h = a.send(msg, after=lambda m: sent(m), ensure=True)     # TTPython's after=lambda msg: ...
    assert h.wait(5) and sent.wait()
    assert sent.calls == [(msg,)] and a.callback_errors == 0
    # TTPython's default after logs msg.message_id: the message has one
    assert isinstance(sent.calls[0][0].message_id, int)


def test_udp_receiver_function_gets_the_received_message(udp_pair):
    a, b, got = udp_pair
    a.send(ttnet.message("token", "127.0.0.1", b.port), ensure=True).wait(5)
    assert got.wait()
    (m,), = got.calls
    assert isinstance(m, ttnet.TTNetworkMessage)
    assert m.decode() == "token" and bytes(m.payload) == ttnet.codec.dumps("token")
    # TTPython builds the received message from the sender's address
    assert m.get_address() == a.address == (m.recipient_ip, m.recipient_port)
    assert isinstance(m.message_id, int) and m.message_id != 0


def test_network_send_message_after_gets_the_message(udp_port):
    got = Recorder()
    b = ttnet.TTNetwork("b", ttnet.TTNetworkInterfaceType.UDP_IP, port=udp_port(),
                        receiver_function=got)
    with b, ttnet.TTNetwork("a", ttnet.TTNetworkInterfaceType.UDP_IP, port=udp_port()) as a:
        a.add_route("b", f"127.0.0.1:{b.interface.port}")
        msg = a.create_message("b", 1)
        sent = Recorder()
        assert a.send_message(msg, ensure=True, after=sent).wait(5) and sent.wait()
        assert sent.calls == [(msg,)]


def test_simulated_after_gets_the_sent_message():
    env = simpy.Environment()
    net = ttnet.SimNetwork(env, ttnet.LinkParams(delay_s=0.001))
    got = Recorder()
    ttnet.TTNetworkInterfaceSim(env, net, "b", receiver_function=got)
    a = ttnet.TTNetworkInterfaceSim(env, net, "a")
    msg = ttnet.TTNetworkMessageSim("b", b"x" * 3000)
    sent = Recorder()
    a.send(msg, ensure=True, after=lambda m: sent(m))
    env.run(until=1)
    assert sent.calls == [(msg,)]
    (m,), = got.calls
    assert m.payload == b"x" * 3000 and m.get_address() == "a" and m.address == "a"
    assert m.recipient_ip is None and m.recipient_port is None    # no IP in a simulation


def test_hand_off_after_gets_the_sent_message():
    env = simpy.Environment()

    class Ensemble:
        def receive_network_message(self, message: Any) -> None:
            pass

    msg = ttnet.TTNetworkMessageSim(Ensemble(), 1)
    sent = Recorder()
    ttnet.TTNetworkInterfaceSim(env).send(msg, after=lambda m: sent(m))
    env.run()
    assert sent.calls == [(msg,)]


def test_sending_window_of_create_sending_window_calls_after_with_the_message(udp_pair):
    a, _, _ = udp_pair
    msg = ttnet.TTNetworkMessageUDP("127.0.0.1", 9000, b"z")
    sent = Recorder()
    w = a.create_sending_window(msg, lambda m: sent(m))
    w.ack(ttnet.TTAckPacket(msg.message_id, 0), None, None)
    assert sent.calls == [(msg,)]


def test_receiving_window_of_create_receiving_window_calls_the_receiver(udp_pair):
    _, b, got = udp_pair
    src = ("127.0.0.1", 9000)
    w = b.create_receiving_window(src, ttnet.TTRequestPacket(3, 1))
    w.receive(ttnet.TTDataPacket(3, 0, b"q"), None, src)
    (m,), = got.calls
    assert bytes(m.payload) == b"q" and m.get_address() == src and m.message_id == 3


def test_wrap_completion_removes_the_entry_then_calls_back_with_msg(udp_pair):
    a, _, _ = udp_pair
    entries = {5: "window", 6: "other"}
    seen = Recorder()
    assert a.wrap_completion(msg="M", message_dict=entries, message_id=5, callback=seen) is None
    assert seen.calls == [("M",)] and entries == {6: "other"}


# -------------------------------------------------- the compatibility rule
def test_after_rule_one_positional_argument_gets_the_message():
    """``after`` is called ``after(msg)`` -- unless it cannot take one
    positional argument, then ``after()`` (code written against ttnet's
    earlier zero-argument contract). Decided once per send."""
    env = simpy.Environment()
    net = ttnet.SimNetwork(env, ttnet.LinkParams(delay_s=0.001))
    ttnet.TTNetworkInterfaceSim(env, net, "b")
    a = ttnet.TTNetworkInterfaceSim(env, net, "a")
    seen: list[tuple[str, Any]] = []
    ev = threading.Event()

    def zero() -> None:
        seen.append(("zero", None))

    def one(msg: Any) -> None:
        seen.append(("one", msg))

    def star(*args: Any) -> None:
        seen.append(("star", args))

    class Obj:
        def method(self) -> None:
            seen.append(("bound zero", None))

        def __call__(self, msg: Any) -> None:
            seen.append(("callable object", msg))

    msgs = {}
    cases = {"zero": zero, "lambda zero": lambda: seen.append(("lambda zero", None)),
             "one": one, "star": star, "bound zero": Obj().method,
             "callable object": Obj(), "event.set": ev.set,
             # a single parameter with a default CAN take one positional
             # argument: it receives the message in place of its default
             "defaulted": lambda ref="default": seen.append(("defaulted", ref))}
    for name, fn in cases.items():
        msgs[name] = ttnet.TTNetworkMessageSim("b", name.encode())
        a.send(msgs[name], after=fn)
    env.run(until=1)
    assert dict(seen) == {"zero": None, "lambda zero": None, "one": msgs["one"],
                          "star": (msgs["star"],), "bound zero": None,
                          "callable object": msgs["callable object"],
                          "defaulted": msgs["defaulted"]}
    assert ev.is_set()


def test_after_rule_is_the_same_over_udp(udp_pair):
    a, b, _ = udp_pair
    zero, one = Recorder(), Recorder()
    h1 = a.send(ttnet.TTNetworkMessageUDP("127.0.0.1", b.port, b"1"), after=lambda: zero())
    msg = ttnet.TTNetworkMessageUDP("127.0.0.1", b.port, b"2")
    h2 = a.send(msg, after=lambda m: one(m))
    assert h1.wait(5) and h2.wait(5) and zero.wait() and one.wait()
    assert zero.calls == [()] and one.calls == [(msg,)] and a.callback_errors == 0


def test_on_failure_still_gets_message_and_reason():
    env = simpy.Environment()
    net = ttnet.SimNetwork(env, ttnet.LinkParams(delay_s=0.001, loss=1.0))
    ttnet.TTNetworkInterfaceSim(env, net, "b")
    a = ttnet.TTNetworkInterfaceSim(env, net, "a")
    failed = Recorder()
    msg = ttnet.TTNetworkMessageSim("b", b"x")
    a.send(msg, ensure=True, deadline_s=0.1, on_failure=failed)
    env.run(until=1)
    (m, reason), = failed.calls
    assert m is msg and reason.startswith("deadline")


def test_simulated_send_refuses_after_in_ensures_place():
    """TTPython's simulated send is ``send(message, ensure=False)``: an
    ``after`` passed second (ttnet's old order) is an error, not a truthy
    ``ensure``."""
    env = simpy.Environment()
    net = ttnet.SimNetwork(env)
    ttnet.TTNetworkInterfaceSim(env, net, "b")
    a = ttnet.TTNetworkInterfaceSim(env, net, "a")
    with pytest.raises(TypeError, match="pass after= by keyword"):
        a.send(ttnet.TTNetworkMessageSim("b", b"x"), lambda m: None)
    with pytest.raises(TypeError, match="pass after= by keyword"):
        ttnet.TTNetworkInterfaceSim(env).send(ttnet.TTNetworkMessageSim(object(), 1), print)
