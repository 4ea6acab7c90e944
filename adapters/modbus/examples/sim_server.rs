//! A Modbus TCP simulator for benchmarks: `ports × units` devices, each with its own
//! table of holding registers (also served as input registers) and coils, counting
//! every request it serves.
//!
//! ```text
//! cargo build --release -p fieldgate-modbus --example sim_server
//! target/release/examples/sim_server --ports 10 --units 10 --registers 1000
//! ```
//!
//! Each port is one TCP listener (one "connection" of the gateway); each answers unit
//! ids `first-unit .. first-unit + units`, and each (port, unit) pair is a device with
//! its own registers. So 100 devices are `--ports 1 --units 100` (one socket, the
//! gateway serialises every request on it), `--ports 10 --units 10` or
//! `--ports 100 --units 1` (a socket per device). A unit id not served answers
//! exception 0x0B (gateway target device failed to respond), as Modbus TCP gateways do.
//!
//! Registers start at `(unit × 31 + address) mod 65536` and, unless `--static`, every
//! register not yet written is incremented once per second, so each poll reads new
//! values. Writes (FC05, FC06, FC15, FC16, FC22) are stored and kept.
//!
//! Standard output, one line each, `key=value` fields:
//!
//! ```text
//! listening port_index=0 address=127.0.0.1:40123     (one per port, before `ready`)
//! ready ports=10 units=10 registers=1000
//! stats t=1.000 requests=800 reads=800 registers=100000 writes=0 exceptions=0 connections=10
//! final t=… requests=… …                              (on SIGTERM / SIGINT, then exit 0)
//! ```
//!
//! `stats` lines (every `--report` seconds, 0 = never) carry cumulative totals since
//! start; `t` is seconds since start. Options:
//!
//! - `--host H`         listen address (default 127.0.0.1)
//! - `--port P`         first port; ports P, P+1, … (default 0: ephemeral ports)
//! - `--ports N`        listeners (default 1)
//! - `--units N`        unit ids per listener (default 100)
//! - `--first-unit U`   first unit id (default 1)
//! - `--registers N`    registers (and coils) per device, 1 to 65536 (default 1000)
//! - `--threads N`      tokio worker threads (default 1)
//! - `--report S`       seconds between stats lines (default 1, fractions allowed)
//! - `--static`         registers change only when written

use std::future::{ready, Ready};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_modbus::prelude::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_modbus::server::tcp::Server;
use tokio_modbus::server::Service;

#[derive(Debug, Clone)]
struct Options {
    host: String,
    port: u16,
    ports: usize,
    units: usize,
    first_unit: u8,
    registers: usize,
    threads: usize,
    report: f64,
    churn: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            host: "127.0.0.1".into(),
            port: 0,
            ports: 1,
            units: 100,
            first_unit: 1,
            registers: 1000,
            threads: 1,
            report: 1.0,
            churn: true,
        }
    }
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--static" {
            o.churn = false;
            continue;
        }
        if a == "-h" || a == "--help" {
            return Err(String::new());
        }
        let v = args.next().ok_or_else(|| format!("{a} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{a} {v}: {e}");
        match a.as_str() {
            "--host" => o.host = v,
            "--port" => o.port = v.parse().map_err(|e| bad(&e))?,
            "--ports" => o.ports = v.parse().map_err(|e| bad(&e))?,
            "--units" => o.units = v.parse().map_err(|e| bad(&e))?,
            "--first-unit" => o.first_unit = v.parse().map_err(|e| bad(&e))?,
            "--registers" => o.registers = v.parse().map_err(|e| bad(&e))?,
            "--threads" => o.threads = v.parse().map_err(|e| bad(&e))?,
            "--report" => o.report = v.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown option {a}")),
        }
    }
    if o.ports == 0 || o.units == 0 || o.threads == 0 {
        return Err("--ports, --units and --threads must be at least 1".into());
    }
    if usize::from(o.first_unit) + o.units > 256 {
        return Err("--first-unit + --units must not exceed 256".into());
    }
    if !(1..=65536).contains(&o.registers) {
        return Err("--registers must be 1 to 65536".into());
    }
    if o.port != 0 && usize::from(o.port) + o.ports > 65536 {
        return Err("--port + --ports must not exceed 65536".into());
    }
    Ok(o)
}

/// One device: its registers, coils, and which registers were written (they stop changing).
struct Device {
    regs: Vec<u16>,
    written: Vec<bool>,
    coils: Vec<bool>,
}

impl Device {
    fn new(unit: u8, n: usize) -> Self {
        Device {
            regs: (0..n)
                .map(|a| (usize::from(unit) * 31 + a) as u16)
                .collect(),
            written: vec![false; n],
            coils: vec![false; n],
        }
    }

    fn tick(&mut self) {
        for (r, w) in self.regs.iter_mut().zip(&self.written) {
            if !w {
                *r = r.wrapping_add(1);
            }
        }
    }
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    reads: AtomicU64,
    registers: AtomicU64,
    writes: AtomicU64,
    exceptions: AtomicU64,
    connections: AtomicU64,
}

impl Counters {
    fn line(&self, what: &str, start: Instant) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "{what} t={:.3} requests={} reads={} registers={} writes={} exceptions={} connections={}",
            start.elapsed().as_secs_f64(),
            get(&self.requests),
            get(&self.reads),
            get(&self.registers),
            get(&self.writes),
            get(&self.exceptions),
            get(&self.connections),
        )
    }
}

/// The devices behind one listener, by unit id.
#[derive(Clone)]
struct Port {
    first_unit: u8,
    devices: Arc<Vec<Mutex<Device>>>,
    counters: Arc<Counters>,
}

impl Port {
    fn answer(&self, req: SlaveRequest<'static>) -> Result<Option<Response>, ExceptionCode> {
        let unit = req.slave;
        let Some(dev) = unit
            .checked_sub(self.first_unit)
            .and_then(|i| self.devices.get(usize::from(i)))
        else {
            return Err(ExceptionCode::GatewayTargetDevice);
        };
        let mut d = dev.lock().unwrap_or_else(|e| e.into_inner());
        let n = d.regs.len();
        let range = |a: u16, q: usize, max: usize| {
            if q == 0 || q > max {
                return Err(ExceptionCode::IllegalDataValue);
            }
            let a = usize::from(a);
            if a + q > n {
                return Err(ExceptionCode::IllegalDataAddress);
            }
            Ok(a..a + q)
        };
        let c = &self.counters;
        match req.request {
            Request::ReadHoldingRegisters(a, q) | Request::ReadInputRegisters(a, q) => {
                let r = range(a, usize::from(q), 125)?;
                c.reads.fetch_add(1, Ordering::Relaxed);
                c.registers.fetch_add(u64::from(q), Ordering::Relaxed);
                let words = d.regs[r].to_vec();
                Ok(Some(match req.request {
                    Request::ReadInputRegisters(..) => Response::ReadInputRegisters(words),
                    _ => Response::ReadHoldingRegisters(words),
                }))
            }
            Request::ReadCoils(a, q) | Request::ReadDiscreteInputs(a, q) => {
                let r = range(a, usize::from(q), 2000)?;
                c.reads.fetch_add(1, Ordering::Relaxed);
                let bits = d.coils[r].to_vec();
                Ok(Some(match req.request {
                    Request::ReadDiscreteInputs(..) => Response::ReadDiscreteInputs(bits),
                    _ => Response::ReadCoils(bits),
                }))
            }
            Request::WriteSingleRegister(a, v) => {
                let r = range(a, 1, 1)?;
                c.writes.fetch_add(1, Ordering::Relaxed);
                d.regs[r.start] = v;
                d.written[r.start] = true;
                Ok(Some(Response::WriteSingleRegister(a, v)))
            }
            Request::WriteMultipleRegisters(a, vs) => {
                let r = range(a, vs.len(), 123)?;
                c.writes.fetch_add(1, Ordering::Relaxed);
                d.regs[r.clone()].copy_from_slice(&vs);
                d.written[r].fill(true);
                Ok(Some(Response::WriteMultipleRegisters(a, vs.len() as u16)))
            }
            Request::MaskWriteRegister(a, and, or) => {
                let r = range(a, 1, 1)?;
                c.writes.fetch_add(1, Ordering::Relaxed);
                let cur = d.regs[r.start];
                d.regs[r.start] = (cur & and) | (or & !and);
                d.written[r.start] = true;
                Ok(Some(Response::MaskWriteRegister(a, and, or)))
            }
            Request::WriteSingleCoil(a, v) => {
                let r = range(a, 1, 1)?;
                c.writes.fetch_add(1, Ordering::Relaxed);
                d.coils[r.start] = v;
                Ok(Some(Response::WriteSingleCoil(a, v)))
            }
            Request::WriteMultipleCoils(a, vs) => {
                let r = range(a, vs.len(), 1968)?;
                c.writes.fetch_add(1, Ordering::Relaxed);
                d.coils[r].copy_from_slice(&vs);
                Ok(Some(Response::WriteMultipleCoils(a, vs.len() as u16)))
            }
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }
}

impl Service for Port {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let answer = self.answer(req);
        if answer.is_err() {
            self.counters.exceptions.fetch_add(1, Ordering::Relaxed);
        }
        ready(answer)
    }
}

async fn serve(listener: TcpListener, port: Port) {
    let server = Server::new(listener);
    let on_connected = |stream: tokio::net::TcpStream, _addr: SocketAddr| {
        let port = port.clone();
        async move {
            let _ = stream.set_nodelay(true);
            port.counters.connections.fetch_add(1, Ordering::Relaxed);
            Ok(Some((port, stream)))
        }
    };
    if let Err(e) = server.serve(&on_connected, |_e| {}).await {
        eprintln!("sim_server: listener failed: {e}");
        std::process::exit(1);
    }
}

async fn run(o: Options) -> std::io::Result<()> {
    let start = Instant::now();
    let counters = Arc::new(Counters::default());
    let mut all: Vec<Arc<Vec<Mutex<Device>>>> = Vec::new();
    for i in 0..o.ports {
        let port = if o.port == 0 { 0 } else { o.port + i as u16 };
        let listener = TcpListener::bind((o.host.as_str(), port)).await?;
        let devices: Arc<Vec<Mutex<Device>>> = Arc::new(
            (0..o.units)
                .map(|u| Mutex::new(Device::new(o.first_unit + u as u8, o.registers)))
                .collect(),
        );
        all.push(devices.clone());
        println!(
            "listening port_index={i} address={}",
            listener.local_addr()?
        );
        tokio::spawn(serve(
            listener,
            Port {
                first_unit: o.first_unit,
                devices,
                counters: counters.clone(),
            },
        ));
    }
    println!(
        "ready ports={} units={} registers={}",
        o.ports, o.units, o.registers
    );
    if o.churn {
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(Duration::from_secs(1));
            iv.tick().await;
            loop {
                iv.tick().await;
                for devices in &all {
                    for d in devices.iter() {
                        d.lock().unwrap_or_else(|e| e.into_inner()).tick();
                    }
                }
            }
        });
    }
    if o.report > 0.0 {
        let c = counters.clone();
        let every = Duration::from_secs_f64(o.report);
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(every);
            iv.tick().await;
            loop {
                iv.tick().await;
                println!("{}", c.line("stats", start));
            }
        });
    }
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    println!("{}", counters.line("final", start));
    Ok(())
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("sim_server: {e}");
            }
            eprintln!(
                "usage: sim_server [--host H] [--port P] [--ports N] [--units N] [--first-unit U] \
                 [--registers N] [--threads N] [--report SECONDS] [--static]"
            );
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(o.threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(o)) {
        eprintln!("sim_server: {e}");
        std::process::exit(1);
    }
}
