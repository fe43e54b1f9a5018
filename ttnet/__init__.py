"""ttnet: the TickTalk Python network layer, rebuilt.

Same names as TTPython's network module; same bytes on the wire. The core
is stdlib-only so it runs in a bare ``python3``.
"""
from .auth import Authenticator
from .codec import SafeDecoder, UnsafePayloadError, default_decoder
from .driver import SendHandle, TTReceivedMessage
from .engine import Engine, EngineConfig, MessageTooLarge
from .events import (Delivered, EngineEvent, SendCompleted, SendFailed, TraceEvent,
                     TraceKind, Tracer)
from .network import (NoRouteError, TTNetwork, TTNetworkInterface,
                      TTNetworkInterfaceType, TTNetworkMessage, parse_udp_address)
from .sim import (LinkParams, SimHandOff, SimNetwork, TTNetworkInterfaceSim,
                  TTNetworkMessageSim)
from .udp import TTNetworkInterfaceUDP, TTNetworkMessageUDP, message
from .window import TTSlidingWindow
from .wire import (MalformedPacket, TTAckPacket, TTDataPacket, TTPacket,
                   TTPacketType, TTRequestPacket, WindowException,
                   convert_to_packet, convert_to_payload, crc32, parse_datagram)

__version__ = "0.1.0"

__all__ = [
    "Authenticator", "SafeDecoder", "UnsafePayloadError", "default_decoder",
    "Delivered", "Engine", "EngineConfig", "EngineEvent", "MessageTooLarge",
    "SendCompleted", "SendFailed", "TraceEvent", "TraceKind", "Tracer",
    "NoRouteError", "TTNetwork", "TTNetworkInterface", "TTNetworkInterfaceType",
    "TTNetworkMessage", "parse_udp_address",
    "LinkParams", "SimHandOff", "SimNetwork", "TTNetworkInterfaceSim", "TTNetworkMessageSim",
    "SendHandle", "TTNetworkInterfaceUDP", "TTNetworkMessageUDP",
    "TTReceivedMessage", "message", "TTSlidingWindow", "MalformedPacket",
    "TTAckPacket", "TTDataPacket", "TTPacket", "TTPacketType", "TTRequestPacket",
    "WindowException", "convert_to_packet", "convert_to_payload", "crc32",
    "parse_datagram",
]
