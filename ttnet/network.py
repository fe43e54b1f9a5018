"""TTNetwork: an ensemble's routing table and message API (TTPython's names).

Owns the mapping from ensemble names to addresses and the choice of
interface. It never implements protocol behaviour itself: UDP and simulated
interfaces do, both through :mod:`ttnet.engine`.
"""
from __future__ import annotations

import enum
import ipaddress
from abc import ABC, abstractmethod
from typing import Any

from . import codec
from .auth import Authenticator
from .driver import AfterFn, FailureFn, ReceiverFn, SendHandle, TTReceivedMessage
from .engine import EngineConfig
from .sim import SimHandOff, SimNetwork, TTNetworkInterfaceSim, TTNetworkMessageSim
from .udp import TTNetworkInterfaceUDP, TTNetworkMessageUDP


class TTNetworkInterfaceType(enum.Enum):
    Simulated = 0
    UDP_IP = 1


class TTNetworkInterface(ABC):
    """What every interface offers (TTPython's abstract interface).

    A subclass calls ``super().__init__(receiver_function)`` first, as in
    TTPython. ttnet's interfaces are registered, not derived; every one
    takes ``ensure`` by keyword (the UDP interface's second positional
    parameter is ``after``, the simulated one's ``ensure``, as in TTPython).
    """

    def __init__(self, receiver_function: ReceiverFn | None = None) -> None:
        self.receiver_function = receiver_function

    @abstractmethod
    def send(self, message: Any, ensure: bool = False) -> Any: ...

    @abstractmethod
    def listen(self) -> None: ...

    @abstractmethod
    def cleanup(self) -> None: ...


class TTNetworkMessage(ABC):
    """Marker base of the interface-specific message classes."""

    @abstractmethod
    def get_address(self) -> Any: ...


TTNetworkInterface.register(TTNetworkInterfaceUDP)
TTNetworkInterface.register(TTNetworkInterfaceSim)
TTNetworkInterface.register(SimHandOff)
TTNetworkMessage.register(TTNetworkMessageUDP)
TTNetworkMessage.register(TTNetworkMessageSim)
TTNetworkMessage.register(TTReceivedMessage)


class NoRouteError(KeyError):
    """Sending to an ensemble name that has no route."""

    def __str__(self) -> str:
        return str(self.args[0])


def parse_udp_address(address: str) -> tuple[str, int]:
    """'10.0.0.2:8225' -> ('10.0.0.2', 8225), with a clear ValueError."""
    if isinstance(address, tuple) and len(address) == 2:
        ip, port = address
    else:
        if not isinstance(address, str) or address.count(":") != 1:
            raise ValueError(f"UDP address {address!r} must look like 'ip:port', e.g. '10.0.0.2:8225'")
        ip, _, port_s = address.partition(":")
        try:
            port = int(port_s)
        except ValueError:
            raise ValueError(f"UDP address {address!r}: port {port_s!r} is not a number") from None
    try:
        ipaddress.IPv4Address(ip)
    except ValueError:
        raise ValueError(f"UDP address {address!r}: {ip!r} is not an IPv4 address") from None
    if not 1024 <= port <= 65535:
        raise ValueError(f"UDP address {address!r}: port must be in 1024..65535")
    return ip, port


class TTNetwork:
    """An ensemble's network endpoint.

    ``TTNetwork(name, TTNetworkInterfaceType.UDP_IP, ip_addr=..., port=...,
    receiver_function=f)`` or ``TTNetwork(name, Simulated, sim=env)``
    (optionally ``sim_network=SimNetwork(...)`` for modelled links).
    ``auth_key`` turns on per-message HMAC authentication (both ends need
    the same key; off by default for TTPython interop).

    TTPython's attributes: ``ensemble_name``, ``interface_type``,
    ``routing_table`` (ensemble name -> address; ttnet stores UDP addresses
    parsed, as ``(ip, port)``) and ``network_interface``.
    """

    def __init__(self, ensemble_name: str, interface_type: TTNetworkInterfaceType,
                 sim: Any = None, ip_addr: str | None = None, port: int | None = None,
                 receiver_function: ReceiverFn | None = None, *,
                 sim_network: SimNetwork | None = None,
                 config: EngineConfig | None = None,
                 failure_function: FailureFn | None = None,
                 auth_key: bytes | str | None = None,
                 decoder: codec.SafeDecoder | None = None) -> None:
        self.ensemble_name = ensemble_name
        self.interface_type = interface_type
        self.routes: dict[str, Any] = {}
        self.decoder = decoder or codec.default_decoder
        if interface_type == TTNetworkInterfaceType.UDP_IP:
            auth = Authenticator(auth_key) if auth_key else None
            self.interface: Any = TTNetworkInterfaceUDP(
                ip_addr=ip_addr or "127.0.0.1", port=8225 if port is None else port,
                receiver_function=receiver_function, failure_function=failure_function,
                config=config, authenticator=auth)
        elif interface_type == TTNetworkInterfaceType.Simulated:
            if sim is None:
                raise ValueError("a Simulated TTNetwork needs sim=<simpy.Environment>")
            if auth_key:
                raise ValueError("auth_key is for the UDP interface; the simulator has no attacker")
            self.interface = TTNetworkInterfaceSim(
                sim, network=sim_network, name=ensemble_name if sim_network else None,
                receiver_function=receiver_function, config=config,
                failure_function=failure_function)
        else:
            raise ValueError(f"unknown interface_type {interface_type!r}; use "
                             "TTNetworkInterfaceType.UDP_IP or .Simulated")

    # --------------------------------------------------------------- routes
    def _normalise(self, address: Any) -> Any:
        if self.interface_type == TTNetworkInterfaceType.UDP_IP:
            return parse_udp_address(address)
        return address

    @property
    def routing_table(self) -> dict[str, Any]:
        """TTPython's name for :attr:`routes` (the same dict)."""
        return self.routes

    @property
    def network_interface(self) -> Any:
        """TTPython's name for :attr:`interface`."""
        return self.interface

    def add_route(self, recipient_ensemble_name: str, recipient_address: Any) -> None:
        """Route ``recipient_ensemble_name`` to ``recipient_address``
        (``'ip:port'`` over UDP, the ensemble object or, with a network
        model, its name in a simulation). Adding a different address for a
        known name is an error: use :meth:`update_route`."""
        name = recipient_ensemble_name
        addr = self._normalise(recipient_address)
        if name in self.routes and self.routes[name] != addr:
            raise ValueError(f"ensemble {name!r} already has a route to {self.routes[name]!r}; "
                             "use update_route to change it")
        self.routes[name] = addr

    def update_route(self, recipient_ensemble_name: str, recipient_address: Any) -> None:
        """Change a known route (unknown names are an error: use
        :meth:`add_route`)."""
        name = recipient_ensemble_name
        if name not in self.routes:
            raise NoRouteError(f"no route to ensemble {name!r} to update; use add_route first")
        self.routes[name] = self._normalise(recipient_address)

    def get_recipient_address(self, recipient_ensemble_name: str) -> Any:
        """The address routed to; :class:`NoRouteError` for an unknown name."""
        name = recipient_ensemble_name
        try:
            return self.routes[name]
        except KeyError:
            known = ", ".join(sorted(self.routes)) or "none"
            raise NoRouteError(f"no route to ensemble {name!r} (known: {known}); "
                               "call add_route(name, address) first") from None

    # ------------------------------------------------------------- messages
    def create_message(self, recipient_name: str, obj: Any) -> Any:
        address = self.get_recipient_address(recipient_name)
        if self.interface_type == TTNetworkInterfaceType.UDP_IP:
            ip, port = address
            return TTNetworkMessageUDP(ip, port, codec.dumps(obj))
        return TTNetworkMessageSim(address, obj)

    def send_message(self, message: Any, ensure: bool = False, *,
                     after: AfterFn | None = None, on_failure: FailureFn | None = None,
                     deadline_s: float | None = None) -> SendHandle:
        """Send a message from :meth:`create_message`; returns its
        :class:`SendHandle` at once. ttnet's extras, by keyword:
        ``after(message)`` on success (``after()`` if it takes no
        argument), ``on_failure(message, reason)`` on failure,
        ``deadline_s``."""
        return self.interface.send(message, after=after, ensure=ensure,
                                   on_failure=on_failure, deadline_s=deadline_s)

    def decode(self, received: Any) -> Any:
        """Decode a received message's payload with this network's decoder."""
        return self.decoder.loads(received.payload)

    @property
    def counters(self) -> dict[str, int]:
        return self.interface.counters

    def close(self) -> None:
        self.interface.cleanup()

    def __enter__(self) -> "TTNetwork":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
