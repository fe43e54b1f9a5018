"""ttnet: the TickTalk Python network layer, rebuilt.

Same names as TTPython's network module; same bytes on the wire. The core
is stdlib-only so it runs in a bare ``python3``.
"""
from .auth import Authenticator
from .codec import SafeDecoder, UnsafePayloadError, default_decoder
from .engine import (Delivered, Engine, EngineConfig, MessageTooLarge,
                     SendCompleted, SendFailed)
from .network import (NoRouteError, TTNetwork, TTNetworkInterface,
                      TTNetworkInterfaceType, TTNetworkMessage, parse_udp_address)
from .sim import LinkParams, SimNetwork, TTNetworkInterfaceSim, TTNetworkMessageSim
from .udp import (SendHandle, TTNetworkInterfaceUDP, TTNetworkMessageUDP,
                  TTReceivedMessage, message)
from .window import TTSlidingWindow
from .wire import (MalformedPacket, TTAckPacket, TTDataPacket, TTPacket,
                   TTPacketType, TTRequestPacket, WindowException,
                   convert_to_packet, convert_to_payload, crc32)

__version__ = "0.1.0"

__all__ = [
    "Authenticator", "SafeDecoder", "UnsafePayloadError", "default_decoder",
    "Delivered", "Engine", "EngineConfig", "MessageTooLarge", "SendCompleted",
    "SendFailed", "NoRouteError", "TTNetwork", "TTNetworkInterface",
    "TTNetworkInterfaceType", "TTNetworkMessage", "parse_udp_address",
    "LinkParams", "SimNetwork", "TTNetworkInterfaceSim", "TTNetworkMessageSim",
    "SendHandle", "TTNetworkInterfaceUDP", "TTNetworkMessageUDP",
    "TTReceivedMessage", "message", "TTSlidingWindow", "MalformedPacket",
    "TTAckPacket", "TTDataPacket", "TTPacket", "TTPacketType", "TTRequestPacket",
    "WindowException", "convert_to_packet", "convert_to_payload", "crc32",
]
