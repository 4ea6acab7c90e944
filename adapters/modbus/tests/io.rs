//! The adapter against an in-process tokio-modbus TCP server: polling, merged reads,
//! writes with byte order, exceptions, a silent unit that must not stall its neighbour,
//! and a server that goes away and comes back.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fieldgate_api::HumanDuration;
use fieldgate_api::{
    Adapter, AdapterContext, AdapterError, AdapterRequest, DeviceEvent, EventKind, EventSink,
    Reachability, ReadOutcome, Value,
};
use fieldgate_modbus::{
    ByteOrder, DataType, DeviceSettings, ModbusAdapter, ModbusConnection, ModbusDevice,
    ModbusField, RegisterKind, Transport,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_modbus::prelude::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_modbus::server::tcp::Server;
use tokio_modbus::server::Service;
use tokio_util::sync::CancellationToken;

/// Like a TCP gateway in front of several units: unit 1 answers from `regs` / `coils`;
/// unit 2 never answers (the server stays responsive to the others); unit 3 refuses
/// reads of address 500 and above with "illegal data address"; unit 4 answers 300 ms
/// late, with registers plus 1,000; unit 5 gets "gateway target device failed to
/// respond" (0B).
#[derive(Clone)]
struct Plc {
    regs: Arc<Mutex<Vec<u16>>>,
    coils: Arc<Mutex<Vec<bool>>>,
    requests: Arc<Mutex<u64>>,
    /// Connections accepted.
    connections: Arc<Mutex<u64>>,
}

type Answer = Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

impl Service for Plc {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Answer;

    fn call(&self, req: Self::Request) -> Self::Future {
        *self.requests.lock().unwrap() += 1;
        let unit = req.slave;
        if unit == 2 {
            return Box::pin(async { Ok(None) });
        }
        if unit == 5 {
            return Box::pin(async { Err(ExceptionCode::GatewayTargetDevice) });
        }
        if let (4, Request::ReadHoldingRegisters(a, n)) = (unit, &req.request) {
            let late: Vec<u16> = self.regs.lock().unwrap()[*a as usize..(*a + *n) as usize]
                .iter()
                .map(|v| v + 1000)
                .collect();
            return Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok(Some(Response::ReadHoldingRegisters(late)))
            });
        }
        let regs = self.regs.clone();
        let coils = self.coils.clone();
        let answer = match req.request {
            Request::ReadHoldingRegisters(a, n) | Request::ReadInputRegisters(a, n) => {
                if unit == 3 && a >= 500 {
                    Err(ExceptionCode::IllegalDataAddress)
                } else {
                    let r = regs.lock().unwrap();
                    Ok(Some(Response::ReadHoldingRegisters(
                        r[a as usize..(a + n) as usize].to_vec(),
                    )))
                }
            }
            Request::ReadCoils(a, n) => {
                let c = coils.lock().unwrap();
                Ok(Some(Response::ReadCoils(
                    c[a as usize..(a + n) as usize].to_vec(),
                )))
            }
            Request::WriteSingleRegister(a, v) => {
                regs.lock().unwrap()[a as usize] = v;
                Ok(Some(Response::WriteSingleRegister(a, v)))
            }
            Request::WriteMultipleRegisters(a, vs) => {
                let mut r = regs.lock().unwrap();
                for (i, v) in vs.iter().enumerate() {
                    r[a as usize + i] = *v;
                }
                Ok(Some(Response::WriteMultipleRegisters(a, vs.len() as u16)))
            }
            Request::WriteSingleCoil(a, v) => {
                coils.lock().unwrap()[a as usize] = v;
                Ok(Some(Response::WriteSingleCoil(a, v)))
            }
            _ => Err(ExceptionCode::IllegalFunction),
        };
        Box::pin(async move { answer })
    }
}

async fn serve(listener: TcpListener, plc: Plc) {
    let server = Server::new(listener);
    let on_connected = |stream, _addr| {
        let plc = plc.clone();
        *plc.connections.lock().unwrap() += 1;
        async move { Ok(Some((plc, stream))) }
    };
    let _ = server.serve(&on_connected, |_e| {}).await;
}

fn plc() -> Plc {
    let mut regs: Vec<u16> = (0..2000).collect();
    // f32 1.5 in ABCD at 100..102.
    regs[100] = 0x3FC0;
    regs[101] = 0x0000;
    Plc {
        regs: Arc::new(Mutex::new(regs)),
        coils: Arc::new(Mutex::new(vec![false; 64])),
        requests: Arc::default(),
        connections: Arc::default(),
    }
}

fn field(kind: RegisterKind, address: u32, dt: DataType) -> ModbusField {
    ModbusField {
        register: kind,
        address,
        data_type: Some(dt),
        order: (!kind.is_bit()).then(|| "ABCD".parse::<ByteOrder>().unwrap()),
        ..ModbusField::default()
    }
}

struct Running {
    events: mpsc::Receiver<DeviceEvent>,
    requests: mpsc::Sender<AdapterRequest>,
    stop: CancellationToken,
}

fn bus(port: u16) -> (fieldgate_modbus::Bus, CancellationToken) {
    let (bus, stop, _task) = bus_task(port);
    (bus, stop)
}

fn bus_task(
    port: u16,
) -> (
    fieldgate_modbus::Bus,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let mut conn = ModbusConnection::new("plc", Transport::Tcp);
    conn.address = Some(format!("127.0.0.1:{port}"));
    conn.timeout = HumanDuration::from_millis(200);
    conn.reconnect_min = HumanDuration::from_millis(50);
    conn.reconnect_max = HumanDuration::from_millis(200);
    let stop = CancellationToken::new();
    let (bus, task) = fieldgate_modbus::Bus::spawn(conn, stop.clone());
    (bus, stop, task)
}

fn start(port: u16, unit: u8, fields: Vec<(&str, ModbusField, bool)>, poll_ms: u64) -> Running {
    let (bus, stop) = bus(port);
    start_on(bus, stop, unit, fields, poll_ms)
}

fn start_on(
    bus: fieldgate_modbus::Bus,
    stop: CancellationToken,
    unit: u8,
    fields: Vec<(&str, ModbusField, bool)>,
    poll_ms: u64,
) -> Running {
    let mut dev = ModbusDevice::new("plc");
    dev.unit = unit;
    let points: Vec<(Arc<str>, fieldgate_modbus::Point)> = fields
        .into_iter()
        .map(|(n, f, w)| (Arc::from(n), f.resolve(&dev, w, None).unwrap()))
        .collect();
    let settings = DeviceSettings {
        unit,
        poll: Duration::from_millis(poll_ms),
        read_back: true,
        write_multiple: false,
        limits: dev.limits(),
    };
    let adapter = ModbusAdapter::new(format!("u{unit}").into(), settings, points, bus).unwrap();
    let (ev_tx, ev_rx) = mpsc::channel(1024);
    let (req_tx, req_rx) = mpsc::channel(8);
    tokio::spawn(Box::new(adapter).run(AdapterContext {
        events: EventSink::new(ev_tx, Arc::default()),
        requests: req_rx,
        shutdown: stop.clone(),
    }));
    Running {
        events: ev_rx,
        requests: req_tx,
        stop,
    }
}

async fn next_reach(r: &mut Running) -> Reachability {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), r.events.recv())
            .await
            .expect("an event within 5 s")
            .unwrap();
        if let EventKind::Reachability(s) = ev.kind {
            return s;
        }
    }
}

async fn reading(r: &mut Running, field: &str) -> Value {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), r.events.recv())
            .await
            .expect("a reading within 5 s")
            .unwrap();
        if let EventKind::Readings(batch) = ev.kind {
            if let Some(rd) = batch.into_iter().find(|r| &*r.field == field) {
                return rd.value;
            }
        }
    }
}

/// Asks `r` for every field of `device`; the answer comes on the returned channel.
async fn ask_read_all(r: &Running, device: &str) -> oneshot::Receiver<ReadOutcome> {
    let (reply, rx) = oneshot::channel();
    r.requests
        .send(AdapterRequest::Read {
            device: device.into(),
            fields: None,
            reply,
        })
        .await
        .unwrap();
    rx
}

async fn listener() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

#[tokio::test]
async fn polls_writes_and_confirms() {
    let (l, port) = listener().await;
    let plc = plc();
    tokio::spawn(serve(l, plc.clone()));
    let mut r = start(
        port,
        1,
        vec![
            (
                "count",
                field(RegisterKind::Holding, 7, DataType::U16),
                false,
            ),
            (
                "flow",
                field(RegisterKind::Holding, 100, DataType::F32),
                true,
            ),
            ("pump", field(RegisterKind::Coil, 3, DataType::Bool), true),
        ],
        100,
    );
    assert_eq!(next_reach(&mut r).await, Reachability::Reachable);
    assert_eq!(reading(&mut r, "flow").await, Value::Double(1.5));
    assert_eq!(reading(&mut r, "count").await, Value::Int(7));

    let (reply, rx) = oneshot::channel();
    let params = vec![
        ("flow".to_string(), Value::Double(-2.25)),
        ("pump".to_string(), Value::Bool(true)),
    ];
    r.requests
        .send(AdapterRequest::Write {
            device: "u1".into(),
            params,
            reply,
        })
        .await
        .unwrap();
    assert_eq!(rx.await.unwrap(), Ok(()));
    // -2.25f32 = 0xC010_0000, ABCD: high word first.
    assert_eq!(plc.regs.lock().unwrap()[100..102], [0xC010, 0x0000]);
    assert!(plc.coils.lock().unwrap()[3]);

    let (reply, rx) = oneshot::channel();
    let params = vec![("count".to_string(), Value::Int(1))];
    r.requests
        .send(AdapterRequest::Write {
            device: "u1".into(),
            params,
            reply,
        })
        .await
        .unwrap();
    assert_eq!(
        rx.await.unwrap(),
        Err(AdapterError::NotWritable("count".into()))
    );
    r.stop.cancel();
}

#[tokio::test]
async fn silent_unit_does_not_stall_its_neighbour() {
    let (l, port) = listener().await;
    tokio::spawn(serve(l, plc()));
    // Two units behind one connection: requests are serialised, so each request to the
    // silent unit costs one timeout (200 ms); its back-off keeps that rare.
    let (shared, stop) = bus(port);
    let c = || vec![("c", field(RegisterKind::Holding, 9, DataType::U16), false)];
    let mut good = start_on(shared.clone(), stop.clone(), 1, c(), 50);
    let mut dead = start_on(shared, stop, 2, c(), 50);
    assert_eq!(next_reach(&mut good).await, Reachability::Reachable);
    match next_reach(&mut dead).await {
        Reachability::Unreachable(why) => {
            assert!(why.public().contains("no answer from unit 2"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    // 20 polls of 50 ms take 1 s alone; the dead unit, backed off (50 ms doubling to
    // 60 s), adds at most a few 200 ms timeouts.
    let t0 = std::time::Instant::now();
    for _ in 0..20 {
        reading(&mut good, "c").await;
    }
    assert!(
        t0.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t0.elapsed()
    );
    // A readout of the dead unit fails at once while it is backed off.
    let rx = ask_read_all(&dead, "u2").await;
    let t0 = std::time::Instant::now();
    let out = rx.await.unwrap();
    assert!(
        matches!(&out.failures[0].1, AdapterError::Timeout(t) if t.contains("unit 2")),
        "{out:?}"
    );
    assert!(t0.elapsed() < Duration::from_millis(150));
    good.stop.cancel();
    dead.stop.cancel();
}

#[tokio::test]
async fn exceptions_fail_fields_but_not_the_device() {
    let (l, port) = listener().await;
    tokio::spawn(serve(l, plc()));
    let mut r = start(
        port,
        3,
        vec![
            ("ok", field(RegisterKind::Holding, 10, DataType::U16), false),
            (
                "missing",
                field(RegisterKind::Holding, 600, DataType::U16),
                false,
            ),
        ],
        100,
    );
    assert_eq!(next_reach(&mut r).await, Reachability::Reachable);
    let out = ask_read_all(&r, "u3").await.await.unwrap();
    assert_eq!(out.readings.len(), 1);
    assert_eq!(out.failures.len(), 1);
    assert!(
        matches!(&out.failures[0].1, AdapterError::IllegalAddress(t) if t.contains("illegal data address")),
        "{out:?}"
    );
    r.stop.cancel();
}

#[tokio::test]
async fn server_restart_is_survived() {
    let (l, port) = listener().await;
    let server = tokio::spawn(serve(l, plc()));
    let mut r = start(
        port,
        1,
        vec![("c", field(RegisterKind::Holding, 9, DataType::U16), false)],
        50,
    );
    assert_eq!(next_reach(&mut r).await, Reachability::Reachable);
    server.abort();
    let _ = server.await;
    // Open connections die with the server's tasks only when their sockets close; the
    // accept loop is gone, and the next request on a broken socket or a new connect fails.
    match next_reach(&mut r).await {
        Reachability::Unreachable(_) => {}
        other => panic!("{other:?}"),
    }
    let l = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(serve(l, plc()));
    assert_eq!(next_reach(&mut r).await, Reachability::Reachable);
    r.stop.cancel();
}

/// Behind a TCP gateway, units that do not answer, answer late or are reported out of
/// reach by the gateway are their own problem: the unit beside them keeps being served
/// on the same connection, with its own values (a late answer is never taken for
/// another request's).
#[tokio::test]
async fn silent_late_and_unreachable_units_keep_the_connection() {
    let (l, port) = listener().await;
    let plc = plc();
    tokio::spawn(serve(l, plc.clone()));
    let (shared, stop) = bus(port);
    let c = || vec![("c", field(RegisterKind::Holding, 9, DataType::U16), false)];
    let mut good = start_on(shared.clone(), stop.clone(), 1, c(), 50);
    let mut silent = start_on(shared.clone(), stop.clone(), 2, c(), 50);
    let mut late = start_on(shared.clone(), stop.clone(), 4, c(), 50);
    let mut gone = start_on(shared, stop.clone(), 5, c(), 50);
    assert_eq!(next_reach(&mut good).await, Reachability::Reachable);
    for (r, expect) in [
        (&mut silent, "no answer from unit 2 within 200ms"),
        (&mut late, "no answer from unit 4 within 200ms"),
        (&mut gone, "gateway target device failed to respond (0B)"),
    ] {
        match next_reach(r).await {
            Reachability::Unreachable(why) => assert!(why.public().contains(expect), "{why}"),
            other => panic!("{other:?}"),
        }
    }
    for _ in 0..20 {
        assert_eq!(reading(&mut good, "c").await, Value::Int(9));
    }
    // A readout of the late unit after its back-off: still no value of its own, and
    // unit 1's next answer is unit 1's.
    let rx = ask_read_all(&good, "u1").await;
    let out = rx.await.unwrap();
    assert_eq!(out.readings[0].value, Value::Int(9), "{out:?}");
    assert_eq!(
        *plc.connections.lock().unwrap(),
        1,
        "a unit's silence dropped the connection"
    );
    stop.cancel();
}

/// A peer that takes connections and closes them at once: whatever the request rate,
/// reconnects are spaced by the growing back-off (50 ms doubling to 200 ms here), not
/// made for every request.
#[tokio::test]
async fn every_drop_waits_the_back_off() {
    let (l, port) = listener().await;
    let accepts: Arc<Mutex<Vec<std::time::Instant>>> = Arc::default();
    let seen = accepts.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            seen.lock().unwrap().push(std::time::Instant::now());
            drop(s);
        }
    });
    let (bus, stop, task) = bus_task(port);
    let t0 = std::time::Instant::now();
    let (mut calls, mut failures) = (0, 0);
    while t0.elapsed() < Duration::from_millis(1500) {
        let op = fieldgate_modbus::BusOp::Read {
            kind: RegisterKind::Holding,
            address: 0,
            count: 1,
        };
        calls += 1;
        if bus.call(1, op).await.is_err() {
            failures += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    task.await.unwrap();
    let accepts = accepts.lock().unwrap();
    assert_eq!(failures, calls);
    // 0, 50, 100, 200, 200, ... ms (jittered from 80 %): about 8 in 1.5 s
    assert!(
        (3..=14).contains(&accepts.len()),
        "{} connections in 1.5 s",
        accepts.len()
    );
    for w in accepts.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(38),
            "reconnected after {:?}",
            w[1] - w[0]
        );
    }
}
