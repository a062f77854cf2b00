"""engram-client: stream observations to an engram server over its native QUIC protocol
and recall them (docs/protocol.md)."""

from .client import (Backoff, ConnectionLost, EngramError, ObservationStream, Options,
                     Refused, ServerError, Session)
from .protocol import Hit, Observation, RecallResult

__all__ = ["Backoff", "ConnectionLost", "EngramError", "Hit", "Observation",
           "ObservationStream", "Options", "RecallResult", "Refused", "ServerError", "Session"]
