//! One Modbus connection (a TCP socket, a serial line, RTU over TCP) shared by every unit
//! behind it. Requests are serialised on the connection, as the protocol requires; each is
//! bounded by the connection's timeout, so a dead unit holds the others up by at most one
//! timeout per request, and the pollers back a dead unit off.
//!
//! The link is dropped on link errors, not on one unit's silence. Over Modbus TCP a unit
//! that does not answer, answers late (the answer is recognised by its transaction id
//! and dropped, see [`crate::instep`]) or is reported out of reach by a gateway (exception
//! 0A / 0B) leaves the connection to the others; RTU frames carry no transaction id, so
//! there a unit's timeout reopens the link lest its late answer be taken for the next.
//! After every link error (connect failed, the peer closed, a frame that is not Modbus)
//! the next connect waits the reconnect back-off, which starts over only once a link has
//! carried an answer. A link the gateway reopens itself to get back in step (RTU after a
//! unit's timeout, half a TCP frame) is opened again at once: the peer is fine.
//!
//! The result keeps tokio-modbus' two layers apart: [`BusError::LinkDown`] and
//! [`BusError::Timeout`] (no usable answer) versus [`BusError::Exception`] (the device
//! answered and said no).

use std::sync::Arc;
use std::time::{Duration, Instant};

use fieldgate_api::{backoff, Reason};
use tokio::sync::{mpsc, oneshot};
use tokio_modbus::client::{Client, Context};
use tokio_modbus::prelude::{ExceptionCode, Request, Response, Slave, SlaveContext};
use tokio_modbus::{ExceptionResponse, ProtocolError};
use tokio_util::sync::CancellationToken;

use crate::config::{Endpoint, ModbusConnection};
use crate::instep::{self, InStep};
use crate::types::RegisterKind;

/// Requests queued per connection before a poller waits.
const QUEUE: usize = 256;

/// One operation on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusOp {
    /// FC01–FC04.
    Read {
        /// Register kind.
        kind: RegisterKind,
        /// Wire address.
        address: u16,
        /// Coils or registers.
        count: u16,
    },
    /// FC05.
    WriteCoil {
        /// Wire address.
        address: u16,
        /// State.
        value: bool,
    },
    /// FC15.
    WriteCoils {
        /// Wire address.
        address: u16,
        /// States.
        values: Vec<bool>,
    },
    /// FC06.
    WriteRegister {
        /// Wire address.
        address: u16,
        /// Value.
        value: u16,
    },
    /// FC16.
    WriteRegisters {
        /// Wire address.
        address: u16,
        /// Values.
        values: Vec<u16>,
    },
    /// FC22.
    MaskWrite {
        /// Wire address.
        address: u16,
        /// AND mask.
        and: u16,
        /// OR mask.
        or: u16,
    },
}

/// What a successful operation returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusAnswer {
    /// Coils or discrete inputs.
    Bits(Vec<bool>),
    /// Registers.
    Words(Vec<u16>),
    /// A write was acknowledged.
    Done,
}

/// Why an operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// No connection: it could not be opened or broke.
    #[error("link down: {0}")]
    LinkDown(Reason),
    /// No answer within the connection's timeout.
    #[error("no answer from unit {unit} within {}", humantime::format_duration(*timeout))]
    Timeout {
        /// The unit asked.
        unit: u8,
        /// The timeout.
        timeout: Duration,
    },
    /// The device answered with a Modbus exception.
    #[error("exception from unit {unit}: {code}")]
    Exception {
        /// The unit.
        unit: u8,
        /// The exception code.
        code: Exception,
    },
    /// The answer made no sense (wrong unit, wrong function, short frame).
    #[error("bad answer from unit {unit}: {text}")]
    Protocol {
        /// The unit.
        unit: u8,
        /// What was wrong.
        text: String,
    },
}

/// Modbus exception codes, by what they mean to a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exception {
    /// 01: the device does not implement this function.
    IllegalFunction,
    /// 02: no such address on the device.
    IllegalAddress,
    /// 03: the device rejects the value.
    IllegalValue,
    /// 04: the device failed while handling the request.
    DeviceFailure,
    /// 05/06: busy, retry later.
    Busy,
    /// 0A: a gateway has no path to the unit.
    GatewayPath,
    /// 0B: a gateway got no answer from the unit.
    GatewayTarget,
    /// Any other code.
    Other(u8),
}

impl std::fmt::Display for Exception {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exception::IllegalFunction => f.write_str("illegal function (01)"),
            Exception::IllegalAddress => f.write_str("illegal data address (02)"),
            Exception::IllegalValue => f.write_str("illegal data value (03)"),
            Exception::DeviceFailure => f.write_str("server device failure (04)"),
            Exception::Busy => f.write_str("server device busy (06)"),
            Exception::GatewayPath => f.write_str("gateway path unavailable (0A)"),
            Exception::GatewayTarget => f.write_str("gateway target device failed to respond (0B)"),
            Exception::Other(c) => write!(f, "exception code {c:02X}"),
        }
    }
}

impl From<ExceptionCode> for Exception {
    fn from(c: ExceptionCode) -> Self {
        match c {
            ExceptionCode::IllegalFunction => Exception::IllegalFunction,
            ExceptionCode::IllegalDataAddress => Exception::IllegalAddress,
            ExceptionCode::IllegalDataValue => Exception::IllegalValue,
            ExceptionCode::ServerDeviceFailure => Exception::DeviceFailure,
            ExceptionCode::ServerDeviceBusy | ExceptionCode::Acknowledge => Exception::Busy,
            ExceptionCode::GatewayPathUnavailable => Exception::GatewayPath,
            ExceptionCode::GatewayTargetDevice => Exception::GatewayTarget,
            other => Exception::Other(u8::from(other)),
        }
    }
}

impl BusError {
    /// Whether the unit gave no usable answer (the poller backs off such a unit): no
    /// link, no answer, an answer that is not one (wrong unit, broken frame), or a
    /// gateway saying the unit behind it is out of reach.
    pub fn is_silence(&self) -> bool {
        matches!(
            self,
            BusError::LinkDown(_)
                | BusError::Timeout { .. }
                | BusError::Protocol { .. }
                | BusError::Exception {
                    code: Exception::GatewayPath | Exception::GatewayTarget,
                    ..
                }
        )
    }

    /// Why, for the device's presence: the public text leaves out host names, ports and
    /// device paths.
    pub fn reason(&self) -> Reason {
        match self {
            BusError::LinkDown(r) => r.prefixed("link down: "),
            other => Reason::new(other.to_string()),
        }
    }

    /// The neutral model's view: link trouble apart from the device's refusals.
    pub fn into_adapter_error(self) -> fieldgate_api::AdapterError {
        use fieldgate_api::AdapterError as E;
        let text = self.to_string();
        match self {
            // The variants' own prefixes ("link down: ...") come from AdapterError.
            BusError::LinkDown(why) => E::LinkDown(why),
            BusError::Timeout { .. } => E::Timeout(text),
            BusError::Protocol { .. } => E::LinkDown(Reason::new(text)),
            BusError::Exception { code, .. } => match code {
                Exception::IllegalAddress => E::IllegalAddress(text),
                Exception::GatewayTarget => E::Timeout(text),
                Exception::GatewayPath => E::LinkDown(Reason::new(text)),
                Exception::Busy => E::Busy(text),
                _ => E::Refused(text),
            },
        }
    }
}

struct Job {
    unit: u8,
    op: BusOp,
    reply: oneshot::Sender<Result<BusAnswer, BusError>>,
}

/// A handle to a running connection; cheap to clone, one per device.
#[derive(Debug, Clone)]
pub struct Bus {
    tx: mpsc::Sender<Job>,
    name: String,
}

impl Bus {
    /// Starts the connection task. It ends when every handle is dropped or `shutdown` is
    /// cancelled.
    pub fn spawn(
        config: ModbusConnection,
        shutdown: CancellationToken,
    ) -> (Bus, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let name = config.name.clone();
        let task = tokio::spawn(run(config, rx, shutdown));
        (Bus { tx, name }, task)
    }

    /// The connection's configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the connection task has ended (shutdown, or a fault): its devices cannot
    /// be served until it is started again.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    fn stopped(&self) -> BusError {
        BusError::LinkDown(format!("connection {} stopped", self.name).into())
    }

    /// Runs one operation for `unit`.
    pub async fn call(&self, unit: u8, op: BusOp) -> Result<BusAnswer, BusError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { unit, op, reply })
            .await
            .map_err(|_| self.stopped())?;
        rx.await.map_err(|_| self.stopped())?
    }
}

async fn run(config: ModbusConnection, mut rx: mpsc::Receiver<Job>, shutdown: CancellationToken) {
    let timeout: Duration = config.timeout.into();
    let endpoint = match config.endpoint() {
        Ok(e) => e,
        Err(e) => {
            // Validated at load; kept as a clean refusal rather than a panic.
            let why = Reason::with_detail(
                format!("invalid connection {}", config.name),
                format!("invalid connection {}: {e}", config.name),
            );
            while let Some(job) = rx.recv().await {
                let _ = job.reply.send(Err(BusError::LinkDown(why.clone())));
            }
            return;
        }
    };
    let mut link = Link::new(&config, &endpoint);
    loop {
        let job = tokio::select! {
            _ = shutdown.cancelled() => break,
            j = rx.recv() => match j { Some(j) => j, None => break },
        };
        if link.ctx.is_none() {
            if let Err(e) = link.open(&endpoint, timeout, &shutdown).await {
                let _ = job.reply.send(Err(e));
                continue;
            }
        }
        let answer = link.exchange(job.unit, &job.op, timeout).await;
        let _ = job.reply.send(answer);
    }
    if let Some(mut c) = link.ctx {
        let _ = tokio::time::timeout(Duration::from_secs(1), c.disconnect()).await;
    }
}

/// The connection's state between requests: the open link, if any, and the back-off.
struct Link<'a> {
    config: &'a ModbusConnection,
    ctx: Option<Context>,
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
    fn new(config: &'a ModbusConnection, endpoint: &Endpoint) -> Self {
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
    async fn open(
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
    async fn exchange(
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
fn describe_protocol_error(e: &ProtocolError) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_modbus::FunctionCode;

    #[test]
    fn bad_answers_are_described_in_words() {
        let texts = [
            describe_protocol_error(&ProtocolError::HeaderMismatch {
                message: "expected/request = Header { transaction_id: 1, unit_id: 2 }".into(),
                result: Ok(Response::ReadHoldingRegisters(vec![1])),
            }),
            describe_protocol_error(&ProtocolError::FunctionCodeMismatch {
                request: FunctionCode::ReadHoldingRegisters,
                result: Ok(Response::ReadCoils(vec![true])),
            }),
            describe_protocol_error(&ProtocolError::FunctionCodeMismatch {
                request: FunctionCode::ReadHoldingRegisters,
                result: Err(ExceptionResponse {
                    function: FunctionCode::Custom(0),
                    exception: ExceptionCode::GatewayTargetDevice,
                }),
            }),
        ];
        assert_eq!(texts[0], "the answer came from another unit");
        assert_eq!(texts[1], "the answer is to function 01 instead of 03");
        for t in &texts {
            assert!(!t.contains(['{', '(', ':']), "debug output in {t:?}");
        }
        let e = BusError::Exception {
            unit: 3,
            code: ExceptionCode::GatewayTargetDevice.into(),
        };
        assert_eq!(
            e.to_string(),
            "exception from unit 3: gateway target device failed to respond (0B)"
        );
        assert!(e.is_silence());
        let e = BusError::Timeout {
            unit: 2,
            timeout: Duration::from_millis(250),
        };
        assert_eq!(e.to_string(), "no answer from unit 2 within 250ms");
    }

    /// The host and port stay out of what every subscriber sees.
    #[tokio::test]
    async fn where_the_link_goes_is_not_public() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let mut conn = ModbusConnection::new("plc", crate::Transport::Tcp);
        conn.address = Some(format!("127.0.0.1:{port}"));
        let stop = CancellationToken::new();
        let (bus, task) = Bus::spawn(conn, stop.clone());
        let op = BusOp::Read {
            kind: RegisterKind::Holding,
            address: 0,
            count: 1,
        };
        let e = bus.call(1, op).await.unwrap_err();
        let reason = e.reason();
        let public = reason.public();
        assert!(
            public.starts_with("link down: connection plc: cannot connect"),
            "{public}"
        );
        assert!(
            !public.contains("127.0.0.1") && !public.contains(&port.to_string()),
            "{public}"
        );
        let detailed = e.to_string();
        assert!(
            detailed.contains(&format!("127.0.0.1:{port}")),
            "{detailed}"
        );
        let adapter = e.into_adapter_error();
        assert!(
            !adapter.public().contains("127.0.0.1"),
            "{}",
            adapter.public()
        );
        assert!(adapter.to_string().contains("127.0.0.1"), "{adapter}");
        stop.cancel();
        task.await.unwrap();
    }
}
