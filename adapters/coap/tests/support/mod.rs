//! An in-process CoAP server for the transport tests: a tokio UDP socket and coap-lite,
//! with switchable misbehaviour. It records every datagram it receives (with the paused
//! clock's time), so tests can check what went over the wire.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coap_lite::option_value::{OptionValueU16, OptionValueU32};
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType};
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// How requests are answered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// The response in the ACK (a NON response to a NON request).
    Piggyback,
    /// An empty ACK at once, the response `delay` later as CON or NON.
    Separate { delay: Duration, con: bool },
    /// A Reset.
    Reset,
    /// Nothing at all.
    Silent,
}

/// What a 4.13 for a too large Block1 block says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TooLargeHint {
    Size1,
    Block1,
}

#[derive(Debug)]
pub struct Behaviour {
    pub mode: Mode,
    /// Requests ignored before answering (lost datagrams).
    pub drop_first: usize,
    /// Send each separate response twice, with the same message id.
    pub duplicate_separate: bool,
    /// path → representation.
    pub resources: HashMap<String, Vec<u8>>,
    /// Largest Block1 block (or unblocked payload) taken; larger ones get 4.13.
    pub block1_max: Option<usize>,
    pub too_large_hint: TooLargeHint,
    /// ETag of every GET response.
    pub etag: Option<Vec<u8>>,
    /// Max-Age of every GET response.
    pub max_age: Option<u32>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            mode: Mode::Piggyback,
            drop_first: 0,
            duplicate_separate: false,
            resources: HashMap::from([("temp".to_string(), b"21.5".to_vec())]),
            block1_max: None,
            too_large_hint: TooLargeHint::Size1,
            etag: None,
            max_age: None,
        }
    }
}

/// One datagram the responder received.
#[derive(Debug, Clone)]
pub struct Rec {
    pub at: Instant,
    pub from: SocketAddr,
    pub packet: Packet,
}

impl Rec {
    pub fn is_request(&self) -> bool {
        matches!(self.packet.header.code, MessageClass::Request(_))
    }
    pub fn mtype(&self) -> MessageType {
        self.packet.header.get_type()
    }
    pub fn mid(&self) -> u16 {
        self.packet.header.message_id
    }
    pub fn observe(&self) -> Option<u32> {
        self.packet
            .get_first_option_as::<OptionValueU32>(CoapOption::Observe)
            .and_then(|r| r.ok())
            .map(|v| v.0)
    }
    pub fn block(&self, which: CoapOption) -> Option<(u32, bool, u8)> {
        self.packet.get_first_option(which).map(|v| {
            let n = v.iter().fold(0u32, |a, b| (a << 8) | u32::from(*b));
            (n >> 4, n & 8 != 0, (n & 7) as u8)
        })
    }
}

#[derive(Debug, Clone)]
pub struct Observer {
    pub peer: SocketAddr,
    pub token: Vec<u8>,
}

struct Shared {
    behaviour: Mutex<Behaviour>,
    log: Mutex<Vec<Rec>>,
    observers: Mutex<Vec<Observer>>,
    /// Block1 upload in progress / done.
    upload: Mutex<Vec<u8>>,
    uploaded: Mutex<Option<Vec<u8>>>,
    next_mid: Mutex<u16>,
    seq: Mutex<u32>,
}

#[derive(Clone)]
pub struct Responder {
    pub addr: SocketAddr,
    socket: Arc<UdpSocket>,
    shared: Arc<Shared>,
}

impl Responder {
    pub async fn start(bind: &str) -> std::io::Result<Responder> {
        let socket = Arc::new(UdpSocket::bind(bind).await?);
        let addr = socket.local_addr()?;
        let shared = Arc::new(Shared {
            behaviour: Mutex::new(Behaviour::default()),
            log: Mutex::new(Vec::new()),
            observers: Mutex::new(Vec::new()),
            upload: Mutex::new(Vec::new()),
            uploaded: Mutex::new(None),
            next_mid: Mutex::new(0x7000),
            seq: Mutex::new(1),
        });
        let r = Responder {
            addr,
            socket,
            shared,
        };
        let me = r.clone();
        tokio::spawn(async move { me.run().await });
        Ok(r)
    }

    pub fn set(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.shared.behaviour.lock().unwrap());
    }

    pub fn log(&self) -> Vec<Rec> {
        self.shared.log.lock().unwrap().clone()
    }

    pub fn requests(&self) -> Vec<Rec> {
        self.log().into_iter().filter(Rec::is_request).collect()
    }

    pub fn observers(&self) -> Vec<Observer> {
        self.shared.observers.lock().unwrap().clone()
    }

    pub fn uploaded(&self) -> Option<Vec<u8>> {
        self.shared.uploaded.lock().unwrap().clone()
    }

    fn mid(&self) -> u16 {
        let mut m = self.shared.next_mid.lock().unwrap();
        *m = m.wrapping_add(1);
        *m
    }

    pub async fn send(&self, p: &Packet, to: SocketAddr) {
        let bytes = p.to_bytes_unlimited().expect("encodable");
        self.send_raw(&bytes, to).await;
    }

    pub async fn send_raw(&self, bytes: &[u8], to: SocketAddr) {
        self.socket.send_to(bytes, to).await.expect("send");
        // Let the receiver see it before the paused clock moves on.
        tokio::task::yield_now().await;
    }

    /// A notification to every observer; returns the message ids used.
    pub async fn notify(&self, seq: Option<u32>, code: u8, payload: &[u8], con: bool) -> Vec<u16> {
        let mut mids = Vec::new();
        for o in self.observers() {
            let mid = self.mid();
            self.notify_one(&o, mid, seq, code, payload, con).await;
            mids.push(mid);
        }
        mids
    }

    /// A notification to one observer with a given message id (to send duplicates).
    pub async fn notify_one(
        &self,
        o: &Observer,
        mid: u16,
        seq: Option<u32>,
        code: u8,
        payload: &[u8],
        con: bool,
    ) {
        let mut p = Packet::new();
        p.header.set_type(if con {
            MessageType::Confirmable
        } else {
            MessageType::NonConfirmable
        });
        p.header.code = MessageClass::from(code);
        p.header.message_id = mid;
        p.set_token(o.token.clone());
        if let Some(s) = seq {
            p.add_option_as(CoapOption::Observe, OptionValueU32(s));
        }
        p.payload = payload.to_vec();
        self.send(&p, o.peer).await;
    }

    async fn run(self) {
        let mut buf = vec![0u8; 65_536];
        loop {
            let Ok((n, from)) = self.socket.recv_from(&mut buf).await else {
                return;
            };
            let Ok(packet) = Packet::from_bytes(&buf[..n]) else {
                continue;
            };
            self.shared.log.lock().unwrap().push(Rec {
                at: Instant::now(),
                from,
                packet: packet.clone(),
            });
            if let MessageClass::Request(method) = packet.header.code {
                self.on_request(from, method, packet).await;
            }
        }
    }

    async fn on_request(&self, from: SocketAddr, method: RequestType, req: Packet) {
        let (mode, dup) = {
            let mut b = self.shared.behaviour.lock().unwrap();
            if b.drop_first > 0 {
                b.drop_first -= 1;
                return;
            }
            (b.mode, b.duplicate_separate)
        };
        let con = req.header.get_type() == MessageType::Confirmable;
        let mut resp = self.answer(from, method, &req);
        resp.set_token(req.get_token().to_vec());
        match mode {
            Mode::Silent => {}
            Mode::Reset => {
                let mut rst = Packet::new();
                rst.header.set_type(MessageType::Reset);
                rst.header.code = MessageClass::Empty;
                rst.header.message_id = req.header.message_id;
                self.send(&rst, from).await;
            }
            Mode::Piggyback => {
                if con {
                    resp.header.set_type(MessageType::Acknowledgement);
                    resp.header.message_id = req.header.message_id;
                } else {
                    resp.header.set_type(MessageType::NonConfirmable);
                    resp.header.message_id = self.mid();
                }
                self.send(&resp, from).await;
            }
            Mode::Separate {
                delay,
                con: resp_con,
            } => {
                if con {
                    let mut ack = Packet::new();
                    ack.header.set_type(MessageType::Acknowledgement);
                    ack.header.code = MessageClass::Empty;
                    ack.header.message_id = req.header.message_id;
                    self.send(&ack, from).await;
                }
                resp.header.set_type(if resp_con {
                    MessageType::Confirmable
                } else {
                    MessageType::NonConfirmable
                });
                resp.header.message_id = self.mid();
                let me = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    me.send(&resp, from).await;
                    if dup {
                        me.send(&resp, from).await;
                    }
                });
            }
        }
    }

    fn answer(&self, from: SocketAddr, method: RequestType, req: &Packet) -> Packet {
        let path: Vec<String> = req
            .get_option(CoapOption::UriPath)
            .map(|l| {
                l.iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let path = path.join("/");
        let mut resp = Packet::new();
        let b = self.shared.behaviour.lock().unwrap();
        match method {
            RequestType::Get => {
                let Some(body) = b.resources.get(&path) else {
                    resp.header.code = MessageClass::from(0x84); // 4.04
                    return resp;
                };
                resp.header.code = MessageClass::from(0x45); // 2.05
                resp.add_option_as(CoapOption::ContentFormat, OptionValueU16(0));
                if let Some(e) = &b.etag {
                    resp.add_option(CoapOption::ETag, e.clone());
                }
                if let Some(m) = b.max_age {
                    resp.add_option_as(CoapOption::MaxAge, OptionValueU32(m));
                }
                let observe = req
                    .get_first_option_as::<OptionValueU32>(CoapOption::Observe)
                    .and_then(|r| r.ok())
                    .map(|v| v.0);
                let mut obs = self.shared.observers.lock().unwrap();
                obs.retain(|o| !(o.peer == from && o.token == req.get_token()));
                if observe == Some(0) {
                    obs.push(Observer {
                        peer: from,
                        token: req.get_token().to_vec(),
                    });
                    let mut seq = self.shared.seq.lock().unwrap();
                    resp.add_option_as(CoapOption::Observe, OptionValueU32(*seq));
                    *seq += 1;
                }
                let requested = req.get_first_option(CoapOption::Block2).map(|v| {
                    let n = v.iter().fold(0u32, |a, b| (a << 8) | u32::from(*b));
                    (n >> 4, (n & 7) as u8)
                });
                if body.len() > 1024 || requested.is_some() {
                    let (num, szx) = requested.unwrap_or((0, 6));
                    let szx = szx.min(6);
                    let size = 16usize << szx;
                    let start = (num as usize * size).min(body.len());
                    let end = (start + size).min(body.len());
                    let more = end < body.len();
                    let v = (num << 4) | (u32::from(more) << 3) | u32::from(szx);
                    resp.add_option_as(CoapOption::Block2, OptionValueU32(v));
                    if num == 0 {
                        resp.add_option_as(CoapOption::Size2, OptionValueU32(body.len() as u32));
                    }
                    resp.payload = body[start..end].to_vec();
                } else {
                    resp.payload = body.clone();
                }
            }
            RequestType::Put | RequestType::Post => {
                let block1 = req.get_first_option(CoapOption::Block1).map(|v| {
                    let n = v.iter().fold(0u32, |a, b| (a << 8) | u32::from(*b));
                    (n >> 4, n & 8 != 0, (n & 7) as u8)
                });
                let size = match block1 {
                    Some((_, _, szx)) => 16usize << szx,
                    None => req.payload.len(),
                };
                if let Some(max) = b.block1_max {
                    if size > max {
                        resp.header.code = MessageClass::from(0x8d); // 4.13
                        match b.too_large_hint {
                            TooLargeHint::Size1 => {
                                resp.add_option_as(CoapOption::Size1, OptionValueU32(max as u32));
                            }
                            TooLargeHint::Block1 => {
                                let szx = (max.max(16).ilog2() - 4).min(6);
                                resp.add_option_as(CoapOption::Block1, OptionValueU32(szx));
                            }
                        }
                        return resp;
                    }
                }
                let mut up = self.shared.upload.lock().unwrap();
                match block1 {
                    None => {
                        *self.shared.uploaded.lock().unwrap() = Some(req.payload.clone());
                        resp.header.code = MessageClass::from(0x44); // 2.04
                    }
                    Some((num, more, szx)) => {
                        let offset = num as usize * (16usize << szx);
                        if offset != up.len() {
                            if offset == 0 {
                                up.clear();
                            } else {
                                resp.header.code = MessageClass::from(0x88); // 4.08
                                return resp;
                            }
                        }
                        up.extend_from_slice(&req.payload);
                        let v = (num << 4) | (u32::from(more) << 3) | u32::from(szx);
                        resp.add_option_as(CoapOption::Block1, OptionValueU32(v));
                        if more {
                            resp.header.code = MessageClass::from(0x5f); // 2.31
                        } else {
                            *self.shared.uploaded.lock().unwrap() = Some(std::mem::take(&mut *up));
                            resp.header.code = MessageClass::from(0x44); // 2.04
                        }
                    }
                }
            }
            _ => resp.header.code = MessageClass::from(0x85), // 4.05
        }
        resp
    }
}
