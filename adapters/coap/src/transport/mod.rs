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
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use fieldgate_coap::transport::*;
//! use tokio_util::sync::CancellationToken;
//!
//! let ep = Endpoint::bind(EndpointConfig::default(), CancellationToken::new())?;
//! let peer = "192.0.2.10:5683".parse()?;
//! let params = TransmissionParams::default();
//!
//! // A read: block-wise transparent, 4.xx/5.xx are Ok(Response).
//! let r = ep.request(peer, Request::get("/sensors/temp"), &params, BlockConfig::default()).await?;
//! println!("{} {:?}", r.code_string(), r.payload);
//!
//! // A write.
//! let put = Request { payload: b"1".to_vec(), content_format: Some(0), ..Request::new(Method::Put, "/relay") };
//! ep.request(peer, put, &params, BlockConfig::default()).await?;
//!
//! // An observation, re-registered after Max-Age + 10 s of silence.
//! let mut obs = ep.observe(peer, Request::get("/sensors/temp"), &params, BlockConfig::default()).await?;
//! while obs.is_active() {
//!     match tokio::time::timeout_at(obs.silence_deadline(Duration::from_secs(10)), obs.next()).await {
//!         Ok(Some(n)) if !n.last => println!("{:?}", n.response.payload),
//!         Ok(_) => break, // ended: observe again later, or poll
//!         Err(_silent) => { obs.reregister().await?; }
//!     }
//! }
//! # Ok(()) }
//! ```
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
