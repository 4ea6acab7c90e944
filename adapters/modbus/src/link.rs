//! One open Modbus link and what it takes to keep it: opening it after the back-off,
//! running one request on it, and telling link errors (drop, back off) from a unit's
//! silence (keep it) and from a stream out of step (reopen at once).

use std::sync::Arc;
use std::time::{Duration, Instant};

use fieldgate_api::{backoff, Reason};
use tokio_modbus::client::{Client, Context};
use tokio_modbus::prelude::{ExceptionCode, Request, Response, Slave, SlaveContext};
use tokio_modbus::{ExceptionResponse, ProtocolError};
use tokio_util::sync::CancellationToken;

use crate::bus::{BusAnswer, BusError, BusOp};
use crate::config::{Endpoint, ModbusConnection};
use crate::instep::{self, InStep};
use crate::types::RegisterKind;

/// The connection's state between requests: the open link, if any, and the back-off.
pub(crate) struct Link<'a> {
    config: &'a ModbusConnection,
    pub(crate) ctx: Option<Context>,
    /// Modbus TCP only: what the late-answer filter sees.
    filter: Option<Arc<instep::Shared>>,
    /// Whether a unit's silence leaves the link usable. Over Modbus TCP a late answer is
    /// recognised by its transaction id; RTU frames carry none, so a late answer could be
    /// taken for the next request's, and the link is opened afresh instead.
    survives_silence: bool,
    /// Silence kept between frames (RTU).
    gap: Duration,
    last_frame: Instant,
    /// Reconnect attempts since the link last carried an answer.
    attempt: u32,
    retry_at: Instant,
    last_error: Reason,
}

impl<'a> Link<'a> {
    pub(crate) fn new(config: &'a ModbusConnection, endpoint: &Endpoint) -> Self {
        let gap = match endpoint {
            Endpoint::Rtu(s) => s.frame_delay.max(s.min_frame_gap()),
            Endpoint::RtuOverTcp { frame_delay, .. } => *frame_delay,
            Endpoint::Tcp { .. } => Duration::ZERO,
        };
        Link {
            config,
            ctx: None,
            filter: None,
            survives_silence: matches!(endpoint, Endpoint::Tcp { .. }),
            gap,
            last_frame: Instant::now(),
            attempt: 0,
            retry_at: Instant::now(),
            last_error: Reason::default(),
        }
    }

    /// Opens the link, after the back-off of the last drop. A request that arrives during
    /// a back-off shorter than the timeout waits for it, as it would wait for a slow
    /// answer; during a longer one it fails at once rather than queue behind a dead peer.
    pub(crate) async fn open(
        &mut self,
        endpoint: &Endpoint,
        timeout: Duration,
        shutdown: &CancellationToken,
    ) -> Result<(), BusError> {
        let wait = self.retry_at.saturating_duration_since(Instant::now());
        if wait > timeout {
            return Err(BusError::LinkDown(self.last_error.clone()));
        }
        if !wait.is_zero() {
            tokio::select! {
                _ = shutdown.cancelled() => return Err(BusError::LinkDown(self.last_error.clone())),
                _ = tokio::time::sleep(wait) => {}
            }
        }
        let name = &self.config.name;
        match tokio::time::timeout(timeout.max(Duration::from_secs(1)), connect(endpoint)).await {
            Ok(Ok((c, filter))) => {
                tracing::info!(connection = %name, "modbus connection up");
                self.ctx = Some(c);
                self.filter = filter;
                Ok(())
            }
            outcome => {
                let why = match outcome {
                    Ok(Err(e)) => e,
                    _ => Reason::new("connect timed out"),
                };
                self.dropped(why.prefixed(&format!("connection {name}: ")));
                Err(BusError::LinkDown(self.last_error.clone()))
            }
        }
    }

    /// The link failed: the next connect waits the back-off, which
    /// grows until a link carries an answer again. So a peer that takes connections and
    /// closes them at once is not hammered, whatever the request rate.
    fn dropped(&mut self, why: Reason) {
        self.ctx = None;
        self.filter = None;
        let delay = backoff(
            self.attempt,
            self.config.reconnect_min.into(),
            self.config.reconnect_max.into(),
        );
        self.attempt = self.attempt.saturating_add(1);
        self.retry_at = Instant::now() + delay;
        tracing::warn!(connection = %self.config.name, reason = %why,
            retry_in_ms = delay.as_millis() as u64, "modbus connection dropped");
        self.last_error = why;
    }

    /// The link works but can no longer be trusted to be in step with the requests (a
    /// unit's late or partial answer may still come): it is closed and opened again for
    /// the next request, at once. Not a link error, so no back-off: the peer is fine, and
    /// the other units on the link should not wait because of one unit.
    fn reopen(&mut self, why: String) {
        self.ctx = None;
        self.filter = None;
        tracing::debug!(connection = %self.config.name, reason = %why, "modbus connection reopened");
        self.last_error = why.into();
    }

    /// Runs one request on the open link.
    pub(crate) async fn exchange(
        &mut self,
        unit: u8,
        op: &BusOp,
        timeout: Duration,
    ) -> Result<BusAnswer, BusError> {
        let Some(c) = self.ctx.as_mut() else {
            return Err(BusError::LinkDown(self.last_error.clone()));
        };
        if !self.gap.is_zero() {
            let since = self.last_frame.elapsed();
            if since < self.gap {
                tokio::time::sleep(self.gap - since).await;
            }
        }
        c.set_slave(Slave(unit));
        let result = tokio::time::timeout(timeout, execute(c, op)).await;
        self.last_frame = Instant::now();
        let name = &self.config.name;
        match result {
            Ok(Ok(Ok(answer))) => {
                self.attempt = 0;
                Ok(answer)
            }
            Ok(Ok(Err(code))) => {
                self.attempt = 0;
                Err(BusError::Exception {
                    unit,
                    code: code.into(),
                })
            }
            Ok(Err(tokio_modbus::Error::Transport(e))) => {
                tracing::debug!(connection = %name, error = %e, "modbus transport error");
                self.dropped(format!("connection {name}: {}", transport_error(&e)).into());
                Err(BusError::LinkDown(self.last_error.clone()))
            }
            Ok(Err(tokio_modbus::Error::Protocol(ProtocolError::FunctionCodeMismatch {
                result: Err(ExceptionResponse { exception, .. }),
                ..
            }))) => {
                // An exception whose function code is not the request's (some gateways
                // send 0x80 with "target device failed to respond"): the header matched,
                // so it answers this request, and what it says is the exception.
                self.attempt = 0;
                Err(BusError::Exception {
                    unit,
                    code: exception.into(),
                })
            }
            Ok(Err(tokio_modbus::Error::Protocol(e))) => {
                // A whole frame came that does not answer the request. Over Modbus TCP
                // the filter let through only the frame with this request's transaction
                // id, so the stream is still in step; an RTU frame from another unit may
                // be a late answer, and the next one would be out of step.
                if !self.survives_silence {
                    self.reopen(format!(
                        "connection {name}: out of step after a bad answer from unit {unit}"
                    ));
                } else {
                    self.attempt = 0;
                }
                Err(BusError::Protocol {
                    unit,
                    text: describe_protocol_error(&e),
                })
            }
            Err(_) => {
                let half_frame = self.filter.as_ref().is_some_and(|f| f.partial());
                if !self.survives_silence || half_frame {
                    self.reopen(format!(
                        "connection {name}: reopened after unit {unit} did not answer"
                    ));
                }
                Err(BusError::Timeout { unit, timeout })
            }
        }
    }
}

/// Says in words what was wrong with an answer (tokio-modbus' own message shows its
/// types' debug output, which means nothing to the peers who read it).
pub(crate) fn describe_protocol_error(e: &ProtocolError) -> String {
    match e {
        ProtocolError::HeaderMismatch { .. } => "the answer came from another unit".to_owned(),
        ProtocolError::FunctionCodeMismatch { request, result } => match result {
            Ok(r) => format!(
                "the answer is to function {:02} instead of {:02}",
                r.function_code().value(),
                request.value()
            ),
            Err(ex) => format!(
                "the answer is an exception to function {:02} instead of {:02}",
                ex.function.value(),
                request.value()
            ),
        },
        // ProtocolError is non-exhaustive.
        #[allow(unreachable_patterns)]
        _ => "the answer does not match the request".to_owned(),
    }
}

/// Describes a transport failure. tokio-modbus reports a stream that the peer closed as
/// `io::Error::last_os_error()`, which carries whatever errno happened to be set (EAGAIN,
/// EINPROGRESS, ...): say what actually happened instead.
fn transport_error(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match (e.kind(), e.raw_os_error()) {
        (K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe, _) => {
            format!("the peer closed the connection ({e})")
        }
        (K::WouldBlock, _) | (_, Some(0 | 11 | 115)) => "the peer closed the connection".into(),
        _ => e.to_string(),
    }
}

/// Opens the link; over Modbus TCP, with the late-answer filter in front of tokio-modbus.
async fn connect(endpoint: &Endpoint) -> Result<(Context, Option<Arc<instep::Shared>>), Reason> {
    match endpoint {
        Endpoint::Tcp { host, port } => {
            let (stream, shared) = InStep::new(tcp(host, *port).await?);
            Ok((tokio_modbus::client::tcp::attach(stream), Some(shared)))
        }
        Endpoint::RtuOverTcp { host, port, .. } => {
            let stream = tcp(host, *port).await?;
            Ok((tokio_modbus::client::rtu::attach(stream), None))
        }
        Endpoint::Rtu(s) => {
            use tokio_serial::{DataBits, Parity as P, SerialPortBuilderExt, StopBits};
            let data_bits = match s.data_bits {
                5 => DataBits::Five,
                6 => DataBits::Six,
                7 => DataBits::Seven,
                _ => DataBits::Eight,
            };
            let parity = match s.parity {
                crate::config::Parity::None => P::None,
                crate::config::Parity::Even => P::Even,
                crate::config::Parity::Odd => P::Odd,
            };
            let stop_bits = if s.stop_bits == 2 {
                StopBits::Two
            } else {
                StopBits::One
            };
            let port = tokio_serial::new(&s.path, s.baud)
                .data_bits(data_bits)
                .parity(parity)
                .stop_bits(stop_bits)
                .open_native_async()
                .map_err(|e| {
                    Reason::with_detail(
                        format!("cannot open the serial port: {e}"),
                        format!("cannot open {}: {e}", s.path),
                    )
                })?;
            Ok((tokio_modbus::client::rtu::attach(port), None))
        }
    }
}

async fn tcp(host: &str, port: u16) -> Result<tokio::net::TcpStream, Reason> {
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| {
            Reason::with_detail(
                format!("cannot connect: {e}"),
                format!("cannot connect to {host}:{port}: {e}"),
            )
        })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

async fn execute(
    c: &mut Context,
    op: &BusOp,
) -> Result<Result<BusAnswer, ExceptionCode>, tokio_modbus::Error> {
    let request = match op {
        BusOp::Read {
            kind,
            address,
            count,
        } => match kind {
            RegisterKind::Coil => Request::ReadCoils(*address, *count),
            RegisterKind::Discrete => Request::ReadDiscreteInputs(*address, *count),
            RegisterKind::Holding => Request::ReadHoldingRegisters(*address, *count),
            RegisterKind::Input => Request::ReadInputRegisters(*address, *count),
        },
        BusOp::WriteCoil { address, value } => Request::WriteSingleCoil(*address, *value),
        BusOp::WriteCoils { address, values } => {
            Request::WriteMultipleCoils(*address, values.as_slice().into())
        }
        BusOp::WriteRegister { address, value } => Request::WriteSingleRegister(*address, *value),
        BusOp::WriteRegisters { address, values } => {
            Request::WriteMultipleRegisters(*address, values.as_slice().into())
        }
        BusOp::MaskWrite { address, and, or } => Request::MaskWriteRegister(*address, *and, *or),
    };
    let expected = match op {
        BusOp::Read { count, .. } => Some(usize::from(*count)),
        _ => None,
    };
    Ok(c.call(request).await?.map(|response| match response {
        Response::ReadCoils(mut bits) | Response::ReadDiscreteInputs(mut bits) => {
            // Coil answers are padded to whole bytes.
            if let Some(n) = expected {
                bits.truncate(n);
            }
            BusAnswer::Bits(bits)
        }
        Response::ReadHoldingRegisters(words) | Response::ReadInputRegisters(words) => {
            BusAnswer::Words(words)
        }
        _ => BusAnswer::Done,
    }))
}
