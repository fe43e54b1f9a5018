"""The driver shell both interfaces share: one dispatch from engine events to
callbacks, one SendHandle type, and the module boundaries around it."""
import ast
import threading
from pathlib import Path

import pytest
import simpy

import ttnet
from ttnet import (EngineConfig, LinkParams, SendHandle, SimHandOff, SimNetwork, TTNetwork,
                   TTNetworkInterfaceSim, TTNetworkInterfaceType, TTNetworkInterfaceUDP,
                   TTNetworkMessageSim, TTNetworkMessageUDP, TTReceivedMessage)
from ttnet.driver import DriverShell, PendingSend, pending_send
from ttnet.engine import Engine
from ttnet.events import Delivered, SendCompleted, SendFailed

TTNET = Path(ttnet.__file__).parent


class FakeEngine:
    """Stands in for an Engine: hands out handles, returns queued events."""

    def __init__(self):
        self.events = []
        self.sent = []

    def send_message(self, address, payload, now, ensure=False, deadline_s=None):
        self.sent.append((address, payload, now, ensure, deadline_s))
        return len(self.sent)

    def pop_events(self):
        ev, self.events = self.events, []
        return ev


def make_shell(**kw):
    engine = FakeEngine()
    return DriverShell(engine, **kw), engine  # type: ignore[arg-type]


def test_dispatch_routes_each_event_to_its_callback():
    got, fails = [], []
    shell, engine = make_shell(receiver_function=got.append)
    done = []
    p1 = pending_send("m1", done.append, None)
    p2 = pending_send("m2", None, lambda m, r: fails.append((m, r)))
    h1, h2 = p1.handle, p2.handle
    shell._start_send("b", b"x", 1.0, True, None, p1)
    shell._start_send("b", b"y", 1.0, False, 3.0, p2)
    assert engine.sent[1] == ("b", b"y", 1.0, False, 3.0)
    engine.events = [Delivered("a", 7, [b"he", b"llo"]), SendCompleted(1, "b", 11, 1),
                     SendFailed(2, "b", 12, 1, "deadline")]
    shell._dispatch_events()
    assert got == [TTReceivedMessage(b"hello", "a", 7)]
    assert done == ["m1"] and h1.done and h1.ok is True
    assert fails == [("m2", "deadline")] and h2.done and h2.ok is False
    assert h2.reason == "deadline" and shell._pending == {}


def test_failure_falls_back_to_the_interface_failure_function():
    seen = []
    shell, engine = make_shell(failure_function=lambda m, r: seen.append((m, r)))
    h = SendHandle("msg")
    shell._start_send("b", b"x", 0.0, True, None, PendingSend(h, None, None))
    engine.events = [SendFailed(1, "b", 5, 1, "interface closed")]
    shell._dispatch_events()
    assert seen == [("msg", "interface closed")] and not h.wait(0)


def test_hooks_decide_where_callbacks_run():
    class Deferred(DriverShell):
        def __init__(self, engine):
            super().__init__(engine, receiver_function=lambda m: ran.append("recv"))
            self.later = []

        def _on_delivered(self, ev):
            self.later.append((self._run_delivered, ev))

    ran = []
    engine = FakeEngine()
    shell = Deferred(engine)
    engine.events = [Delivered("a", 1, [b"x"])]
    shell._dispatch_events()
    assert ran == [] and len(shell.later) == 1
    fn, ev = shell.later[0]
    fn(ev)
    assert ran == ["recv"]


def test_payload_hook_can_withhold_a_message():
    class Rejecting(DriverShell):
        def _payload_of(self, ev):
            return None

    got = []
    engine = FakeEngine()
    shell = Rejecting(engine, receiver_function=got.append)
    engine.events = [Delivered("a", 1, [b"x"])]
    shell._dispatch_events()
    assert got == []


def test_send_handle_wait_and_done():
    h = SendHandle("m")
    assert not h.done and h.ok is None and h.wait(0) is False and h.wait(-1) is False
    results = []
    waiters = [threading.Thread(target=lambda: results.append(h.wait(5))) for _ in range(3)]
    for t in waiters:
        t.start()
    h._set(True)
    for t in waiters:
        t.join(5)
    assert results == [True, True, True] and h.done and h.wait() is True
    h._set(False, "late")                       # the first outcome stands
    assert h.ok is True and h.reason is None


# ----------------------------------------------- one send() type everywhere
def test_udp_and_simulated_sends_return_the_same_handle_type(udp_port):
    env = simpy.Environment()
    net = SimNetwork(env, LinkParams(delay_s=0.001))
    got = []
    TTNetworkInterfaceSim(env, net, "b", receiver_function=got.append)
    a = TTNetworkInterfaceSim(env, net, "a")
    sim_handle = a.send(TTNetworkMessageSim("b", b"x" * 3000), ensure=True)
    direct = TTNetworkInterfaceSim(env)

    class Ensemble:
        def receive_network_message(self, message):
            got.append(message)

    direct_handle = direct.send(TTNetworkMessageSim(Ensemble(), {"token": 1}))
    assert type(sim_handle) is SendHandle and type(direct_handle) is SendHandle
    assert not sim_handle.done and not direct_handle.done
    env.run(until=1)
    assert sim_handle.done and sim_handle.ok and direct_handle.done and direct_handle.ok
    assert len(got) == 2

    udp = TTNetworkInterfaceUDP(port=udp_port())
    try:
        udp_handle = udp.send(TTNetworkMessageUDP("127.0.0.1", udp_port(), b"x"),
                              deadline_s=0.2)
        assert type(udp_handle) is SendHandle
        assert udp_handle.wait(5) is False and udp_handle.reason.startswith("deadline")
    finally:
        udp.cleanup()


def test_simulated_failure_resolves_the_handle_and_calls_back():
    env = simpy.Environment()
    net = SimNetwork(env, LinkParams(delay_s=0.001, loss=1.0))
    TTNetworkInterfaceSim(env, net, "b")
    fails = []
    a = TTNetworkInterfaceSim(env, net, "a", failure_function=lambda m, r: fails.append(r))
    h = a.send(TTNetworkMessageSim("b", b"x"), ensure=True, deadline_s=0.5)
    env.run(until=2)
    assert h.done and h.ok is False and h.reason.startswith("deadline")
    assert fails == [h.reason]


def test_ttpython_mode_is_the_hand_off_class():
    env = simpy.Environment()
    iface = TTNetworkInterfaceSim(env)
    assert isinstance(iface.hand_off, SimHandOff) and iface.counters == {}
    net = TTNetwork("a", TTNetworkInterfaceType.Simulated, sim=env)
    assert isinstance(net.interface, TTNetworkInterfaceSim)
    assert isinstance(SimHandOff(env), ttnet.TTNetworkInterface)


def test_simulated_message_too_large_raises_at_send():
    env = simpy.Environment()
    net = SimNetwork(env)
    TTNetworkInterfaceSim(env, net, "b")
    a = TTNetworkInterfaceSim(env, net, "a", config=EngineConfig(max_message_size=10))
    with pytest.raises(ValueError, match="max_message_size"):
        a.send(TTNetworkMessageSim("b", b"x" * 11))


# ---------------------------------------------------------- module boundaries
def _imports(module: str) -> set[str]:
    tree = ast.parse((TTNET / f"{module}.py").read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            out.add(node.module or "")
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_simulated_driver_does_not_import_the_socket_driver():
    assert "udp" not in _imports("sim")
    assert not {"udp", "sim", "socket", "selectors"} & _imports("driver")


def test_udp_driver_does_not_reach_into_engine_state():
    src = (TTNET / "udp.py").read_text()
    # it re-exports TTPython's packet classes, but never builds an ACK itself
    assert "_peers" not in src and "TTAckPacket(" not in src


def test_old_import_paths_still_work():
    from ttnet import engine, udp
    assert udp.SendHandle is SendHandle and udp.TTReceivedMessage is TTReceivedMessage
    assert engine.Delivered is Delivered and engine.SendCompleted is SendCompleted
    assert issubclass(Delivered, ttnet.EngineEvent) and issubclass(SendFailed, ttnet.EngineEvent)
    assert isinstance(Engine(), Engine)
