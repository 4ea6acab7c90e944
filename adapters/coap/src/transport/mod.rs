//! The CoAP transport: RFC 7252's message layer (confirmable retransmission with randomised
//! exponential back-off, duplicate detection, empty ACKs and separate responses, Reset) and
//! request/response layer (token matching, NSTART per server), RFC 7959 block-wise
//! transfers and RFC 7641 Observe, over tokio UDP sockets. `coap-lite` encodes and decodes
//! the messages; everything else is here.
//!
//! ```text
//!  Endpoint::request / observe          (endpoint.rs: sockets, receive task, routing)
//!    └─ block.rs      Block1 upload / Block2 download, 4.13 shrinking, body limit
//!        └─ queue.rs  NSTART: one outstanding interaction per server, FIFO
//!            └─ exchange.rs  one request ⇄ one response: CON retransmission, empty ACK,
//!                            separate response, RST, NON
//!  receive task: codec.rs (decode + validate) → dedup.rs (CON/NON duplicates, re-ACK)
//!                → routes.rs ((peer, mid) for ACK/RST, (peer, token) for responses)
//!  ids.rs: message ids per peer, tokens;  observe.rs: notifications, freshness, cancel
//! ```
//!
//! One [`Endpoint`] serves every device of the adapter: one UDP socket per address family,
//! one receive task, all stopped by the `CancellationToken` given to [`Endpoint::bind`].
//!
//! Security: plain CoAP (`coap://`) only. DTLS would wrap the datagram I/O of
//! `endpoint.rs` (one DTLS session per peer under the same routing); OSCORE (RFC 8613)
//! would protect the request before `exchange.rs` encodes it and unprotect the response
//! after matching, and needs no change to the message layer.

mod block;
mod codec;
mod dedup;
mod endpoint;
mod error;
mod exchange;
mod ids;
mod observe;
mod params;
mod queue;
mod routes;
mod stats;
mod types;

pub use block::BlockConfig;
pub use endpoint::{Endpoint, EndpointConfig};
pub use error::TransportError;
pub use observe::{Notification, Observation};
pub use params::{TransmissionParams, DEFAULT_MAX_AGE};
pub use stats::Stats;
pub use types::{Method, Request, Response};
