"""Round-trip estimation and congestion window for one peer.

Owns the numbers that decide *when* a packet is presumed lost and *how much*
may be in flight: RFC 6298's smoothed RTT / variance with a bounded RTO, and
a TCP-like window (slow start, additive increase, one multiplicative decrease
per round trip). Pure arithmetic on times it is given; never reads a clock.
"""
from __future__ import annotations

from dataclasses import dataclass

#: Clock granularity term of RFC 6298 (G): keeps the RTO above the sample
#: noise of a loopback or LAN path where rttvar collapses to ~0.
_GRANULARITY_S = 0.001


@dataclass
class RttEstimator:
    initial_rto_s: float = 0.1
    min_rto_s: float = 0.005
    max_rto_s: float = 2.0
    #: multiplies the computed timeout (1: RFC 6298); a model knob
    scale: float = 1.0
    srtt: float | None = None
    rttvar: float = 0.0
    min_rtt: float | None = None
    #: Measured delay variation: like rttvar but starting from 0 instead of
    #: RFC 6298's conservative R/2, so it reflects only what was observed.
    mdev: float = 0.0

    def sample(self, rtt: float) -> None:
        if rtt < 0:
            return
        if self.srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            dev = abs(self.srtt - rtt)
            self.rttvar = 0.75 * self.rttvar + 0.25 * dev
            self.mdev = 0.75 * self.mdev + 0.25 * dev
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        if self.min_rtt is None or rtt < self.min_rtt:
            self.min_rtt = rtt

    @property
    def rto(self) -> float:
        if self.srtt is None:
            return self.initial_rto_s * self.scale
        # srtt/8 keeps the RTO above the round trip when the variance has
        # collapsed (fixed-delay links, where only a queue in the receiver
        # host separates a late ACK from a lost packet): without it, every
        # small processing hiccup was a spurious retransmission.
        rto = (self.srtt + max(_GRANULARITY_S, self.srtt / 8, 4 * self.rttvar)) * self.scale
        return min(max(rto, self.min_rto_s), self.max_rto_s)


@dataclass
class CongestionWindow:
    """Packets allowed in flight towards one peer."""

    initial: float = 32.0
    maximum: float = 1000.0
    minimum: float = 2.0
    cwnd: float = 32.0
    ssthresh: float = 1000.0
    last_reduction: float = float("-inf")

    def __post_init__(self) -> None:
        self.cwnd = min(self.initial, self.maximum)
        self.ssthresh = self.maximum

    def on_ack(self) -> None:
        if self.cwnd < self.ssthresh:
            self.cwnd += 1.0
        else:
            self.cwnd += 1.0 / self.cwnd
        if self.cwnd > self.maximum:
            self.cwnd = self.maximum

    def on_loss(self, now: float, srtt: float) -> bool:
        """Halve the window, at most once per round trip (losses from one
        flight are one congestion event). Returns True if it reduced."""
        if now - self.last_reduction < srtt:
            return False
        self.last_reduction = now
        self.ssthresh = max(self.cwnd / 2, self.minimum)
        self.cwnd = self.ssthresh
        return True
