//! QUIC endpoints for the server and the client, with the same transport tuning on both
//! sides.
//!
//! The one setting that matters for speed is the packet size. QUIC starts at 1200-byte
//! packets and raises them by path MTU discovery up to an upper bound; quinn's default
//! bound is 1452 (Ethernet). Every packet costs a seal, an open, a syscall share and
//! acknowledgement work, so on paths that carry larger datagrams (loopback, jumbo-frame
//! LANs) a higher bound moves the same bytes in fewer packets. Discovery probes the path
//! and falls back when probes are lost, so a high bound on an ordinary network costs a
//! few lost probes, never correctness.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Ethernet MTU minus IP and UDP headers: quinn's own default bound.
pub const UDP_PAYLOAD_MAX_ETHERNET: u16 = 1452;
/// The default bound: larger packets measured slower on loopback here (docs/performance.md).
pub const UDP_PAYLOAD_MAX_DEFAULT: u16 = UDP_PAYLOAD_MAX_ETHERNET;
pub const ACK_ELICITING_THRESHOLD_DEFAULT: u32 = 16;
pub const MAX_ACK_DELAY_DEFAULT: Duration = Duration::from_millis(2);
pub const SOCKET_BUFFER_BYTES_DEFAULT: usize = 4 << 20;
/// The largest UDP payload QUIC allows.
pub const UDP_PAYLOAD_MAX_LIMIT: u16 = 65527;

/// Where the server keeps its QUIC secret, under DATA_DIR.
pub const QUIC_SECRET_FILE: &str = "quic-secret.key";
const RESET_KEY_BYTES: usize = 64;
const CID_KEY_BYTES: usize = 8;

/// What a server needs to recognise its own connections across a restart: the key its
/// connection IDs are signed with, and the key its stateless-reset tokens derive from.
///
/// A restarted server with fresh keys drops packets of the connections it had as invalid
/// (quinn checks the CID signature before answering), so its clients only notice after
/// their idle timeout. With the same keys it answers them with a stateless reset, which
/// the client verifies against the token it got at the handshake: the connection ends at
/// once, and the client reconnects and resumes.
pub struct QuicSecret {
    reset_key: [u8; RESET_KEY_BYTES],
    cid_key: u64,
}

impl QuicSecret {
    /// Loads DATA_DIR/tls/quic-secret.key, or makes one (mode 0600) on first start.
    pub fn load_or_generate(data_dir: &Path) -> Result<QuicSecret, EndpointError> {
        let path = data_dir.join(super::tls::TLS_DIR).join(QUIC_SECRET_FILE);
        let secret_err = |reason: String| EndpointError::Secret {
            path: path.clone(),
            reason,
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                if bytes.len() != RESET_KEY_BYTES + CID_KEY_BYTES {
                    return Err(secret_err(format!(
                        "{} bytes, expected {}: remove it to make a new one",
                        bytes.len(),
                        RESET_KEY_BYTES + CID_KEY_BYTES
                    )));
                }
                let (reset, cid) = bytes.split_at(RESET_KEY_BYTES);
                Ok(QuicSecret {
                    reset_key: reset.try_into().expect("split at the key length"),
                    cid_key: u64::from_le_bytes(cid.try_into().expect("8 bytes")),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let secret = QuicSecret {
                    reset_key: rand::random(),
                    cid_key: rand::random(),
                };
                let mut bytes = secret.reset_key.to_vec();
                bytes.extend_from_slice(&secret.cid_key.to_le_bytes());
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| secret_err(e.to_string()))?;
                }
                super::tls::write_durably(&path, &bytes, super::tls::SECRET_MODE)
                    .map_err(|e| secret_err(e.to_string()))?;
                Ok(secret)
            }
            Err(e) => Err(secret_err(e.to_string())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("QUIC secret {path}: {reason}")]
    Secret { path: PathBuf, reason: String },
    #[error("binding UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("UDP payload bound {got} is out of range: expected 1200..={UDP_PAYLOAD_MAX_LIMIT}")]
    PayloadBound { got: u16 },
    #[error("idle timeout {0:?} is too long for QUIC")]
    IdleTimeout(Duration),
}

/// Transport settings both sides use.
#[derive(Clone, Copy, Debug)]
pub struct QuicTuning {
    /// Upper bound of path MTU discovery, as a UDP payload size.
    pub udp_payload_max: u16,
    /// Packets the peer may receive before it must acknowledge them (QUIC ACK frequency
    /// extension). Streaming one way sends mostly data; fewer ACKs back save a packet,
    /// a seal and a syscall on one side and their processing on the other.
    pub ack_eliciting_threshold: u32,
    /// The longest the peer may hold an acknowledgement back.
    pub max_ack_delay: Duration,
    /// UDP socket send and receive buffer size asked of the kernel.
    pub socket_buffer_bytes: usize,
}

/// Bounds on what one QUIC connection to the server may hold.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Sessions (bidirectional streams) open at once on one connection; QUIC itself
    /// holds a client back past it.
    pub streams_per_connection_max: u32,
    /// A connection that sends nothing (not even a keep-alive) for this long is closed.
    pub idle_timeout: Duration,
}

pub const STREAMS_PER_CONNECTION_MAX_DEFAULT: u32 = 16;
pub const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

impl Default for ConnectionLimits {
    fn default() -> ConnectionLimits {
        ConnectionLimits {
            streams_per_connection_max: STREAMS_PER_CONNECTION_MAX_DEFAULT,
            idle_timeout: IDLE_TIMEOUT_DEFAULT,
        }
    }
}

impl Default for QuicTuning {
    fn default() -> Self {
        QuicTuning {
            udp_payload_max: UDP_PAYLOAD_MAX_DEFAULT,
            ack_eliciting_threshold: ACK_ELICITING_THRESHOLD_DEFAULT,
            max_ack_delay: MAX_ACK_DELAY_DEFAULT,
            socket_buffer_bytes: SOCKET_BUFFER_BYTES_DEFAULT,
        }
    }
}

impl QuicTuning {
    fn endpoint_config(
        &self,
        secret: Option<&QuicSecret>,
    ) -> Result<quinn::EndpointConfig, EndpointError> {
        if !(1200..=UDP_PAYLOAD_MAX_LIMIT).contains(&self.udp_payload_max) {
            return Err(EndpointError::PayloadBound {
                got: self.udp_payload_max,
            });
        }
        let mut config = match secret {
            None => quinn::EndpointConfig::default(),
            Some(secret) => {
                let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret.reset_key);
                let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
                let cid_key = secret.cid_key;
                config.cid_generator(move || {
                    Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
                });
                config
            }
        };
        config
            .max_udp_payload_size(self.udp_payload_max)
            .map_err(|_| EndpointError::PayloadBound {
                got: self.udp_payload_max,
            })?;
        Ok(config)
    }

    /// The transport config; `idle_timeout` also sets keep-alives at a third of it.
    pub fn transport_config(
        &self,
        idle_timeout: Option<Duration>,
    ) -> Result<quinn::TransportConfig, EndpointError> {
        let mut transport = quinn::TransportConfig::default();
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(self.udp_payload_max);
        transport.mtu_discovery_config(Some(mtu));
        let mut acks = quinn::AckFrequencyConfig::default();
        acks.ack_eliciting_threshold(quinn::VarInt::from_u32(self.ack_eliciting_threshold))
            .max_ack_delay(Some(self.max_ack_delay))
            .reordering_threshold(quinn::VarInt::from_u32(2));
        transport.ack_frequency_config(Some(acks));
        if let Some(idle) = idle_timeout {
            transport.keep_alive_interval(Some(idle / 3));
            transport.max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(idle).map_err(|_| EndpointError::IdleTimeout(idle))?,
            ));
        }
        Ok(transport)
    }

    fn bind(
        &self,
        addr: SocketAddr,
        server: Option<quinn::ServerConfig>,
        secret: Option<&QuicSecret>,
    ) -> Result<quinn::Endpoint, EndpointError> {
        let bind_err = |source| EndpointError::Bind { addr, source };
        let socket = self.udp_socket(addr).map_err(bind_err)?;
        quinn::Endpoint::new(
            self.endpoint_config(secret)?,
            server,
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(bind_err)
    }

    /// A UDP socket with buffers of `socket_buffer_bytes`. With the kernel's default
    /// (about 200 KiB) a burst of packets overflows the receive buffer while the endpoint
    /// task waits for a core: the dropped packets come back only after a loss timeout,
    /// milliseconds later. The kernel caps the size at net.core.rmem_max / wmem_max; a
    /// smaller buffer than asked for is logged, not refused.
    fn udp_socket(&self, addr: SocketAddr) -> std::io::Result<UdpSocket> {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            // Accept IPv4-mapped peers too, as std's bind does by default on Linux.
            let _ = socket.set_only_v6(false);
        }
        let wanted = self.socket_buffer_bytes;
        let _ = socket.set_recv_buffer_size(wanted);
        let _ = socket.set_send_buffer_size(wanted);
        let got = socket.recv_buffer_size().unwrap_or(0);
        // Linux reports double the size set (it counts its bookkeeping).
        if got < wanted {
            tracing::warn!(
                wanted,
                got,
                "the UDP receive buffer is smaller than asked for: raise net.core.rmem_max"
            );
        }
        socket.bind(&addr.into())?;
        Ok(socket.into())
    }

    /// A server endpoint on `addr`, serving `config` with this tuning. With `secret`,
    /// connections from before a restart are reset at once (see `QuicSecret`).
    pub fn server(
        &self,
        addr: SocketAddr,
        mut config: quinn::ServerConfig,
        secret: Option<&QuicSecret>,
        limits: &ConnectionLimits,
    ) -> Result<quinn::Endpoint, EndpointError> {
        let mut transport = self.transport_config(None)?;
        transport
            .max_concurrent_bidi_streams(limits.streams_per_connection_max.into())
            .max_concurrent_uni_streams(0u32.into())
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(limits.idle_timeout)
                    .map_err(|_| EndpointError::IdleTimeout(limits.idle_timeout))?,
            ));
        config.transport_config(Arc::new(transport));
        self.bind(addr, Some(config), secret)
    }

    /// A client endpoint on an ephemeral port of the family that reaches `server`.
    pub fn client(&self, server: SocketAddr) -> Result<quinn::Endpoint, EndpointError> {
        let any: SocketAddr = if server.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        }
        .parse()
        .expect("valid");
        self.bind(any, None, None)
    }
}
