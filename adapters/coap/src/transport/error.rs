//! What can go wrong below the response code. A response with an error code (4.xx, 5.xx)
//! is not a [`TransportError`]: it is an answer, returned as a [`super::Response`]. The
//! two map to different XMPP errors (link down vs. the device said no).

use std::time::Duration;

/// Why a request or an observation got no usable response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// A confirmable message was sent and retransmitted `retransmissions` times
    /// (MAX_RETRANSMIT) and nothing came back: the server is unreachable or down.
    #[error("no answer after {retransmissions} retransmissions")]
    Timeout {
        /// How many retransmissions were sent after the first transmission.
        retransmissions: u32,
    },
    /// The request was acknowledged (empty ACK) but the separate response did not come,
    /// or a non-confirmable request got no response, within `waited`.
    #[error("no response within {waited:?}")]
    NoResponse {
        /// How long the transport waited for the response.
        waited: Duration,
    },
    /// The server answered with a Reset (RST): it did not accept the message, e.g. after
    /// a restart it lost the context, or it cannot parse it.
    #[error("reset by the server")]
    Reset,
    /// A body exceeds a limit: a response body over the configured maximum, or a request
    /// body the server will not take (4.13 with Size1 even at the smallest block size).
    #[error("body too large: the limit is {limit} bytes")]
    TooLarge {
        /// The limit in bytes (ours for a response, the server's Size1 for a request).
        limit: usize,
    },
    /// The socket failed (or there is no socket for the peer's address family).
    #[error("socket error: {0}")]
    Io(String),
    /// The server's answers break the protocol (a block out of sequence, a body that
    /// changed three times during a block-wise transfer, an invalid option value).
    #[error("protocol error: {0}")]
    Malformed(String),
    /// The call itself is wrong: invalid parameters or block settings, an option value
    /// too long to encode, Observe with another method than GET. Not worth retrying.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The endpoint was stopped (its cancellation token fired).
    #[error("the CoAP endpoint is stopped")]
    Stopped,
}

impl From<std::io::Error> for TransportError {
    fn from(e: std::io::Error) -> Self {
        TransportError::Io(e.to_string())
    }
}
