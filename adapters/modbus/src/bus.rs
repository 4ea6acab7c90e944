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

use std::time::Duration;

use fieldgate_api::Reason;
use tokio::sync::{mpsc, oneshot};
use tokio_modbus::client::Client;
use tokio_modbus::prelude::ExceptionCode;
use tokio_util::sync::CancellationToken;

use crate::config::ModbusConnection;
use crate::link::Link;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::describe_protocol_error;
    use tokio_modbus::prelude::Response;
    use tokio_modbus::FunctionCode;
    use tokio_modbus::{ExceptionResponse, ProtocolError};

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
