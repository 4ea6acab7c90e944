//! One Modbus connection (a TCP socket, a serial line, RTU over TCP) shared by every unit
//! behind it. Requests are serialised on the connection, as the protocol requires; each is
//! bounded by the connection's timeout, so a dead unit holds the others up by at most one
//! timeout per request, and the pollers back a dead unit off.
//!
//! The result keeps tokio-modbus' two layers apart: [`BusError::LinkDown`] and
//! [`BusError::Timeout`] (no usable answer) versus [`BusError::Exception`] (the device
//! answered and said no).

use std::time::{Duration, Instant};

use fieldgate_api::backoff;
use tokio::sync::{mpsc, oneshot};
use tokio_modbus::client::{Client, Context};
use tokio_modbus::prelude::{ExceptionCode, Request, Response, Slave, SlaveContext};
use tokio_util::sync::CancellationToken;

use crate::config::{Endpoint, ModbusConnection};
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
    LinkDown(String),
    /// No answer within the connection's timeout.
    #[error("no answer from unit {unit} within {timeout:?}")]
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
            Exception::Other(c) => write!(f, "exception code {c:#04x}"),
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
            other => Exception::Other(u8::from(other)),
        }
    }
}

impl BusError {
    /// Whether the unit gave no usable answer (the poller backs off such a unit): no
    /// link, no answer, or an answer that is not one (wrong unit, broken frame).
    pub fn is_silence(&self) -> bool {
        matches!(
            self,
            BusError::LinkDown(_) | BusError::Timeout { .. } | BusError::Protocol { .. }
        )
    }

    /// The neutral model's view: link trouble apart from the device's refusals.
    pub fn into_adapter_error(self) -> fieldgate_api::AdapterError {
        use fieldgate_api::AdapterError as E;
        let text = self.to_string();
        match self {
            // The variants' own prefixes ("link down: ...") come from AdapterError.
            BusError::LinkDown(why) => E::LinkDown(why),
            BusError::Timeout { .. } => E::Timeout(text),
            BusError::Protocol { .. } => E::LinkDown(text),
            BusError::Exception { code, .. } => match code {
                Exception::IllegalAddress => E::IllegalAddress(text),
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

    /// Runs one operation for `unit`.
    pub async fn call(&self, unit: u8, op: BusOp) -> Result<BusAnswer, BusError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { unit, op, reply })
            .await
            .map_err(|_| BusError::LinkDown(format!("connection {} stopped", self.name)))?;
        rx.await
            .map_err(|_| BusError::LinkDown(format!("connection {} stopped", self.name)))?
    }
}

async fn run(config: ModbusConnection, mut rx: mpsc::Receiver<Job>, shutdown: CancellationToken) {
    let span = tracing::info_span!("modbus", connection = %config.name);
    let _enter = span.enter();
    drop(_enter);
    let timeout: Duration = config.timeout.into();
    let endpoint = match config.endpoint() {
        Ok(e) => e,
        Err(e) => {
            // Validated at load; kept as a clean refusal rather than a panic.
            let why = format!("invalid connection {}: {e}", config.name);
            while let Some(job) = rx.recv().await {
                let _ = job.reply.send(Err(BusError::LinkDown(why.clone())));
            }
            return;
        }
    };
    let gap = match &endpoint {
        Endpoint::Rtu(s) => s.frame_delay.max(s.min_frame_gap()),
        Endpoint::RtuOverTcp { frame_delay, .. } => *frame_delay,
        Endpoint::Tcp { .. } => Duration::ZERO,
    };
    let mut ctx: Option<Context> = None;
    let mut attempt: u32 = 0;
    let mut retry_at = Instant::now();
    let mut last_error = String::new();
    let mut last_frame = Instant::now();
    loop {
        let job = tokio::select! {
            _ = shutdown.cancelled() => break,
            j = rx.recv() => match j { Some(j) => j, None => break },
        };
        if ctx.is_none() {
            if Instant::now() < retry_at {
                // Back-off: fail fast instead of hammering a dead peer for every request.
                let _ = job.reply.send(Err(BusError::LinkDown(last_error.clone())));
                continue;
            }
            match tokio::time::timeout(timeout.max(Duration::from_secs(1)), connect(&endpoint))
                .await
            {
                Ok(Ok(c)) => {
                    tracing::info!(connection = %config.name, "modbus connection up");
                    ctx = Some(c);
                    attempt = 0;
                }
                outcome => {
                    let why = match outcome {
                        Ok(Err(e)) => e,
                        _ => "connect timed out".to_owned(),
                    };
                    let delay = backoff(
                        attempt,
                        config.reconnect_min.into(),
                        config.reconnect_max.into(),
                    );
                    attempt = attempt.saturating_add(1);
                    retry_at = Instant::now() + delay;
                    last_error = format!("connection {}: {why}", config.name);
                    tracing::warn!(connection = %config.name, reason = %why,
                        retry_in_ms = delay.as_millis() as u64, "modbus connection failed");
                    let _ = job.reply.send(Err(BusError::LinkDown(last_error.clone())));
                    continue;
                }
            }
        }
        let Some(c) = ctx.as_mut() else { continue };
        if !gap.is_zero() {
            let since = last_frame.elapsed();
            if since < gap {
                tokio::time::sleep(gap - since).await;
            }
        }
        c.set_slave(Slave(job.unit));
        let result = tokio::time::timeout(timeout, execute(c, &job.op)).await;
        last_frame = Instant::now();
        let answer = match result {
            Ok(Ok(Ok(answer))) => Ok(answer),
            Ok(Ok(Err(code))) => Err(BusError::Exception {
                unit: job.unit,
                code: code.into(),
            }),
            Ok(Err(tokio_modbus::Error::Transport(e))) => {
                ctx = None;
                last_error = format!("connection {}: {}", config.name, transport_error(&e));
                tracing::warn!(connection = %config.name, error = %e, "modbus connection lost");
                Err(BusError::LinkDown(last_error.clone()))
            }
            Ok(Err(tokio_modbus::Error::Protocol(e))) => {
                // A reply to another request or unit: the stream is out of step.
                ctx = None;
                Err(BusError::Protocol {
                    unit: job.unit,
                    text: e.to_string(),
                })
            }
            Err(_) => {
                // A late answer would be taken for the next request's: start afresh.
                ctx = None;
                Err(BusError::Timeout {
                    unit: job.unit,
                    timeout,
                })
            }
        };
        let _ = job.reply.send(answer);
    }
    if let Some(mut c) = ctx {
        let _ = tokio::time::timeout(Duration::from_secs(1), c.disconnect()).await;
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

async fn connect(endpoint: &Endpoint) -> Result<Context, String> {
    match endpoint {
        Endpoint::Tcp { host, port } => {
            let stream = tcp(host, *port).await?;
            Ok(tokio_modbus::client::tcp::attach(stream))
        }
        Endpoint::RtuOverTcp { host, port, .. } => {
            let stream = tcp(host, *port).await?;
            Ok(tokio_modbus::client::rtu::attach(stream))
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
                .map_err(|e| format!("cannot open {}: {e}", s.path))?;
            Ok(tokio_modbus::client::rtu::attach(port))
        }
    }
}

async fn tcp(host: &str, port: u16) -> Result<tokio::net::TcpStream, String> {
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
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
