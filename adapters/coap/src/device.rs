//! One CoAP device at run time: its resources read by polling or observed, its values
//! decoded by each response's Content-Format, its writes sent as PUT or POST, and its
//! reachability reported from what the transport says.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fieldgate_api::{
    AdapterError, AdapterRequest, DeviceId, FieldSpec, Quality, Reachability, ReadOutcome, Reading,
    Reason, Refusal, Value,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::config::CommandMethod;
use crate::setup::{CoapSetup, Resource};
use crate::transport::{
    BlockConfig, Endpoint, Method, Request, Response, TransmissionParams, TransportError,
};

/// Outcomes of the resource tasks, waiting for the adapter's loop.
const OUTCOMES: usize = 64;

/// A server address that does not resolve is looked up again after this long at most
/// (or the poll period, if shorter).
const RESOLVE_RETRY: Duration = Duration::from_secs(10);

/// What a resource task learnt.
enum Outcome {
    /// Values of resource `r`.
    Values(Vec<Reading>),
    /// The server answered (reachable), possibly with an error for one resource.
    Answered,
    /// The server could not be reached, or ended an observation; why.
    Failed(Reason),
    /// One polling round: the values read, and why the round ended early if the server
    /// stopped answering.
    Round(Vec<Reading>, Option<Reason>),
}

/// The adapter of one CoAP device.
pub struct CoapAdapter {
    /// The device.
    pub id: DeviceId,
    /// Its resolved configuration.
    pub setup: Arc<CoapSetup>,
    /// Its catalogue.
    pub fields: Arc<[FieldSpec]>,
    /// The shared UDP endpoint.
    pub endpoint: Endpoint,
    /// The CoAP thread's runtime, where the device's tasks run (see `runtime.rs`).
    pub runtime: tokio::runtime::Handle,
}

/// A transport failure as the device's status shows it.
pub fn reason(e: &TransportError) -> Reason {
    match e {
        TransportError::Timeout { retransmissions } => {
            Reason::new(format!("no answer after {retransmissions} retransmissions"))
        }
        TransportError::Reset => Reason::new("reset by the server"),
        other => Reason::new(other.to_string()),
    }
}

/// A response code that is not a success, as the kind of refusal it is.
pub fn refusal((class, detail): (u8, u8), max_age: Option<Duration>) -> Option<Refusal> {
    Some(match (class, detail) {
        (2, _) => return None,
        (4, 0 | 2 | 8 | 12) => Refusal::BadRequest,
        (4, 1 | 3) => Refusal::Forbidden,
        (4, 4) => Refusal::NotFound,
        (4, 5) => Refusal::NotAllowed,
        (4, 6 | 13 | 15) => Refusal::NotAcceptable,
        (4, _) => Refusal::BadRequest,
        (5, 3) => Refusal::Unavailable {
            retry_after: max_age,
        },
        _ => Refusal::Internal,
    })
}

/// An error response as a failure's text: its code, and the start of its diagnostic
/// payload if it has one (RFC 7252 §5.5.2).
fn answered_text(resp: &Response) -> String {
    let text = String::from_utf8_lossy(&resp.payload);
    let text: String = text.chars().take(64).collect();
    if text.is_empty() {
        code_text(resp.code)
    } else {
        format!("{} ({text})", code_text(resp.code))
    }
}

/// `c.dd` as CoAP writes response codes.
pub fn code_text((class, detail): (u8, u8)) -> String {
    format!("{class}.{detail:02}")
}

struct Context {
    id: DeviceId,
    setup: Arc<CoapSetup>,
    fields: Arc<[FieldSpec]>,
    endpoint: Endpoint,
    params: TransmissionParams,
    block: BlockConfig,
}

impl Context {
    fn request(&self, r: &Resource) -> Request {
        Request {
            method: Method::Get,
            path: r.path.clone(),
            query: vec![],
            content_format: None,
            accept: r.accept,
            payload: vec![],
            confirmable: self.setup.device.confirmable,
        }
    }

    /// The readings in a response of resource `r`; bad content is logged and counted.
    fn decode(&self, r: &Resource, resp: &Response) -> Vec<Reading> {
        if let Some(kind) = refusal(resp.code, resp.max_age) {
            tracing::warn!(device = %self.id, resource = %r.display(), code = %code_text(resp.code),
                refusal = ?kind, "CoAP resource answered with an error");
            return vec![];
        }
        let decoder = match r.decoder(resp.content_format) {
            Ok(d) => d,
            Err(why) => {
                tracing::warn!(device = %self.id, resource = %r.display(), reason = %why,
                    "CoAP payload not usable");
                return vec![];
            }
        };
        let taken = Instant::now();
        match decoder.decode(&resp.payload, SystemTime::now()) {
            Ok(d) => {
                for (k, e) in &d.errors {
                    tracing::warn!(device = %self.id, resource = %r.display(),
                        field = %self.fields[r.fields[*k]].name, reason = %e, "CoAP payload not usable");
                }
                d.values
                    .into_iter()
                    .map(|(k, value, stamp)| Reading {
                        field: self.fields[r.fields[k]].name.clone(),
                        value,
                        timestamp: stamp,
                        taken,
                        quality: Quality::Good,
                    })
                    .collect()
            }
            Err(e) => {
                tracing::warn!(device = %self.id, resource = %r.display(), reason = %e,
                    "CoAP payload not usable");
                vec![]
            }
        }
    }

    /// Reads resource `r` once.
    async fn read(&self, peer: SocketAddr, r: &Resource) -> Result<Vec<Reading>, TransportError> {
        let resp = self
            .endpoint
            .request(peer, self.request(r), &self.params, self.block.clone())
            .await?;
        Ok(self.decode(r, &resp))
    }
}

impl fieldgate_api::Adapter for CoapAdapter {
    fn kind(&self) -> &'static str {
        "coap"
    }

    fn devices(&self) -> Vec<DeviceId> {
        vec![self.id.clone()]
    }

    fn run(
        self: Box<Self>,
        ctx: fieldgate_api::AdapterContext,
    ) -> futures::future::BoxFuture<'static, ()> {
        let rt = self.runtime.clone();
        Box::pin(async move {
            // Aborted when the core drops this future, so the device never outlives it.
            let mut task = AbortOnDrop(rt.spawn(run(*self, ctx)));
            let _ = (&mut task.0).await;
        })
    }
}

/// A task handle that aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn params(setup: &CoapSetup) -> TransmissionParams {
    TransmissionParams {
        ack_timeout: setup.device.ack_timeout.0,
        ack_random_factor: setup.device.ack_random_factor,
        max_retransmit: setup.device.max_retransmit,
        ..TransmissionParams::default()
    }
}

async fn run(a: CoapAdapter, mut ctx: fieldgate_api::AdapterContext) {
    let cx = Arc::new(Context {
        params: params(&a.setup),
        block: BlockConfig {
            block_size: usize::from(a.setup.device.block_size),
            max_body: a.setup.device.max_body,
        },
        id: a.id,
        setup: a.setup,
        fields: a.fields,
        endpoint: a.endpoint,
    });
    let events = ctx.events.clone();
    let mut reach: Option<Reachability> = None;
    let report = |reach: &mut Option<Reachability>, r: Reachability| {
        let changed = reach.as_ref() != Some(&r);
        *reach = Some(r.clone());
        changed.then_some(r)
    };
    // The server's address, looked up again until it resolves; meanwhile requests are
    // answered at once with the reason.
    let peer = loop {
        let why = match cx.setup.address.resolve().await {
            Ok(a) => break a,
            Err(e) => Reason::with_detail(
                "the server's address does not resolve",
                format!("{}: {e}", cx.setup.address.authority()),
            ),
        };
        if let Some(r) = report(&mut reach, Reachability::Unreachable(why.clone())) {
            if !events.reachability(&cx.id, r).await {
                return;
            }
        }
        let again = tokio::time::sleep(cx.setup.device.poll.0.min(RESOLVE_RETRY));
        tokio::pin!(again);
        loop {
            tokio::select! {
                _ = ctx.shutdown.cancelled() => return,
                _ = &mut again => break,
                req = ctx.requests.recv() => match req {
                    None => return,
                    Some(AdapterRequest::Read { fields, reply, .. }) => {
                        let names: Vec<String> = match fields {
                            Some(f) => f,
                            None => cx.fields.iter().map(|f| f.name.to_string()).collect(),
                        };
                        let failures = names
                            .into_iter()
                            .map(|n| (n, AdapterError::LinkDown(why.clone())))
                            .collect();
                        let _ = reply.send(ReadOutcome { failures, ..ReadOutcome::default() });
                    }
                    Some(AdapterRequest::Write { reply, .. }) => {
                        let _ = reply.send(Err(AdapterError::LinkDown(why.clone())));
                    }
                    Some(AdapterRequest::Adopt { .. }) => {}
                },
            }
        }
    };
    let (tx, mut outcomes) = mpsc::channel::<Outcome>(OUTCOMES);
    let mut tasks = JoinSet::new();
    if cx.setup.device.observe {
        for i in 0..cx.setup.resources.len() {
            let (cx, tx, cancel) = (cx.clone(), tx.clone(), ctx.shutdown.clone());
            tasks.spawn(observe(cx, peer, i, tx, cancel));
        }
    } else {
        let all = (0..cx.setup.resources.len()).collect();
        tasks.spawn(poll(
            cx.clone(),
            peer,
            all,
            tx.clone(),
            ctx.shutdown.clone(),
        ));
    }
    drop(tx);
    let mut writes = JoinSet::new();
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            o = outcomes.recv() => {
                let Some(o) = o else { break };
                let r = match o {
                    Outcome::Values(readings) => {
                        events.readings(&cx.id, readings);
                        Reachability::Reachable
                    }
                    Outcome::Answered => Reachability::Reachable,
                    Outcome::Failed(why) => Reachability::Unreachable(why),
                    Outcome::Round(readings, failed) => {
                        events.readings(&cx.id, readings);
                        failed.map_or(Reachability::Reachable, Reachability::Unreachable)
                    }
                };
                if let Some(r) = report(&mut reach, r) {
                    if !events.reachability(&cx.id, r).await {
                        break;
                    }
                }
            }
            req = ctx.requests.recv() => match req {
                None => break,
                Some(AdapterRequest::Read { fields, reply, .. }) => {
                    let cx = cx.clone();
                    writes.spawn(async move {
                        let _ = reply.send(read(&cx, peer, fields).await);
                    });
                }
                Some(AdapterRequest::Write { params, reply, .. }) => {
                    let cx = cx.clone();
                    writes.spawn(async move {
                        let _ = reply.send(write(&cx, peer, params).await);
                    });
                }
                Some(AdapterRequest::Adopt { .. }) => {}
            },
            Some(_) = writes.join_next(), if !writes.is_empty() => {}
        }
    }
    // Observations are deregistered by their tasks as the token fires.
    while tasks.join_next().await.is_some() {}
    writes.abort_all();
}

/// Reads resources `which` every poll period, one after the other, and hands over each
/// round's values at once. One task per device, not per resource: NSTART 1 lets one
/// server answer one request at a time anyway, and one hand-off per round instead of one
/// per resource is what keeps the CPU of a poll low (each crosses to the core's thread).
/// The first round runs at once; later rounds are shifted by a phase of the device's own
/// (see [`phase`]), so that the devices of one server do not all poll at one instant.
async fn poll(
    cx: Arc<Context>,
    peer: SocketAddr,
    which: Vec<usize>,
    tx: mpsc::Sender<Outcome>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let period = cx.setup.device.poll.0;
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + period + phase(&cx.id, period),
        period,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut readings = Vec::new();
        let mut failed = None;
        for &i in &which {
            let r = &cx.setup.resources[i];
            match cx.read(peer, r).await {
                Ok(v) => readings.extend(v),
                Err(TransportError::Stopped) => return,
                Err(e) => {
                    let timed_out = matches!(e, TransportError::Timeout { .. });
                    failed = Some(reason(&e));
                    if timed_out {
                        // The server does not answer: the rest of the round would only
                        // queue more exchanges that time out, each holding the queue.
                        break;
                    }
                }
            }
        }
        if tx.send(Outcome::Round(readings, failed)).await.is_err() {
            return;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
    }
}

/// A device's polling phase, in [0, `period`): a hash of its id, so that it is spread
/// evenly over the devices and the same on every start.
fn phase(id: &DeviceId, period: Duration) -> Duration {
    // FNV-1a (stable across releases, unlike std's hasher), then MurmurHash3's
    // finaliser: FNV alone leaves the high bits of similar short ids alike.
    let mut h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    period.mul_f64((h >> 11) as f64 / (1u64 << 53) as f64)
}

/// Observes resource `i`: registers, takes notifications in order, registers again when
/// they stop for longer than Max-Age plus the margin, polls when the server will not let
/// it be observed, and deregisters when cancelled.
async fn observe(
    cx: Arc<Context>,
    peer: SocketAddr,
    i: usize,
    tx: mpsc::Sender<Outcome>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let r = &cx.setup.resources[i];
    let margin = cx.setup.device.observe_margin.0;
    loop {
        let registered = tokio::select! {
            _ = cancel.cancelled() => return,
            o = cx.endpoint.observe(peer, cx.request(r), &cx.params, cx.block.clone()) => o,
        };
        let mut obs = match registered {
            Ok(o) => o,
            Err(TransportError::Stopped) => return,
            Err(e) => {
                if tx.send(Outcome::Failed(reason(&e))).await.is_err() {
                    return;
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(cx.setup.device.poll.0) => {}
                }
                continue;
            }
        };
        let first = obs.first().clone();
        let values = cx.decode(r, &first);
        let o = if values.is_empty() {
            Outcome::Answered
        } else {
            Outcome::Values(values)
        };
        if tx.send(o).await.is_err() {
            return;
        }
        if !obs.is_active() {
            // The server does not let the resource be observed: poll it.
            tracing::info!(device = %cx.id, resource = %r.display(),
                "observation not accepted by the server; polling instead");
            poll(cx.clone(), peer, vec![i], tx, cancel).await;
            return;
        }
        let mut max_age = first.max_age_or_default();
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => {
                    // Deregistration is best effort: the server forgets it anyway
                    // once it sees an RST for a later notification.
                    let _ = tokio::time::timeout(Duration::from_secs(1), obs.cancel()).await;
                    return;
                }
                n = tokio::time::timeout(max_age + margin, obs.next()) => n,
            };
            match next {
                Err(_) => {
                    tracing::info!(device = %cx.id, resource = %r.display(),
                        silent_s = (max_age + margin).as_secs(), "observation silent; registering again");
                    break;
                }
                Ok(None) => {
                    let why = Reason::new("observation cancelled by the server");
                    if tx.send(Outcome::Failed(why)).await.is_err() {
                        return;
                    }
                    break;
                }
                Ok(Some(n)) => {
                    max_age = n.response.max_age_or_default();
                    let values = cx.decode(r, &n.response);
                    let o = if values.is_empty() {
                        Outcome::Answered
                    } else {
                        Outcome::Values(values)
                    };
                    if tx.send(o).await.is_err() {
                        return;
                    }
                    if n.last {
                        // An error code or no Observe option: the server ended it.
                        let why = Reason::new("observation cancelled by the server");
                        if tx.send(Outcome::Failed(why)).await.is_err() {
                            return;
                        }
                        break;
                    }
                }
            }
        }
    }
}

/// Answers a read with fresh values of the resources that hold the wanted fields.
async fn read(cx: &Context, peer: SocketAddr, fields: Option<Vec<String>>) -> ReadOutcome {
    let wanted = |idx: usize| {
        fields
            .as_ref()
            .is_none_or(|f| f.iter().any(|n| *n == *cx.fields[idx].name))
    };
    let mut out = ReadOutcome::default();
    for r in &cx.setup.resources {
        if !r.fields.iter().any(|i| wanted(*i)) {
            continue;
        }
        let answer = cx
            .endpoint
            .request(peer, cx.request(r), &cx.params, cx.block.clone())
            .await;
        match answer {
            Ok(resp) if refusal(resp.code, resp.max_age).is_some() => {
                let kind = refusal(resp.code, resp.max_age).expect("checked");
                let text = answered_text(&resp);
                for i in r.fields.iter().filter(|i| wanted(**i)) {
                    out.failures.push((
                        cx.fields[*i].name.to_string(),
                        AdapterError::Answered {
                            kind,
                            text: format!("{} answered {text}", r.display()),
                        },
                    ));
                }
            }
            Ok(resp) => {
                let values = cx.decode(r, &resp);
                for i in r.fields.iter().filter(|i| wanted(**i)) {
                    let name = &cx.fields[*i].name;
                    match values.iter().find(|v| v.field == *name) {
                        Some(v) => out.readings.push(v.clone()),
                        None => out.failures.push((
                            name.to_string(),
                            AdapterError::Refused(format!(
                                "no value for it in the answer of {}",
                                r.display()
                            )),
                        )),
                    }
                }
            }
            Err(e) => {
                for i in r.fields.iter().filter(|i| wanted(**i)) {
                    out.failures.push((
                        cx.fields[*i].name.to_string(),
                        AdapterError::LinkDown(reason(&e)),
                    ));
                }
            }
        }
    }
    out
}

/// Sends a write, parameter by parameter.
async fn write(
    cx: &Context,
    peer: SocketAddr,
    params: Vec<(String, Value)>,
) -> Result<(), AdapterError> {
    for (name, value) in params {
        let idx = cx
            .fields
            .iter()
            .position(|f| *f.name == *name)
            .ok_or_else(|| AdapterError::UnknownField(name.clone()))?;
        let spec = &cx.fields[idx];
        let cmd = cx.setup.commands[idx]
            .as_ref()
            .ok_or_else(|| AdapterError::NotWritable(name.clone()))?;
        spec.validate_write(&value)?;
        let payload =
            fieldgate_payload::encode(&cmd.template, spec, &value, None).map_err(|e| {
                AdapterError::InvalidValue {
                    field: name.clone(),
                    reason: e.to_string(),
                }
            })?;
        let req = Request {
            method: match cmd.method {
                CommandMethod::Put => Method::Put,
                CommandMethod::Post => Method::Post,
            },
            path: cmd.path.clone(),
            query: vec![],
            content_format: Some(cmd.content_format),
            accept: None,
            payload,
            confirmable: cx.setup.device.confirmable,
        };
        let resp = cx
            .endpoint
            .request(peer, req, &cx.params, cx.block.clone())
            .await
            .map_err(|e| match e {
                TransportError::Timeout { .. } | TransportError::NoResponse { .. } => {
                    AdapterError::Timeout(e.to_string())
                }
                // The server answered: it takes no payload this large.
                TransportError::TooLarge { .. } => AdapterError::Answered {
                    kind: Refusal::NotAcceptable,
                    text: format!("4.13 Request Entity Too Large ({e})"),
                },
                other => AdapterError::LinkDown(reason(&other)),
            })?;
        if let Some(kind) = refusal(resp.code, resp.max_age) {
            return Err(AdapterError::Answered {
                kind,
                text: answered_text(&resp),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polling_phases_are_stable_in_range_and_spread() {
        let period = Duration::from_secs(1);
        let phases: Vec<Duration> = (0..1000)
            .map(|i| phase(&DeviceId::from(format!("dev{i}")), period))
            .collect();
        assert!(phases.iter().all(|p| *p < period));
        assert_eq!(phases[7], phase(&DeviceId::from("dev7"), period));
        // Ten slots of 100 ms each hold a tenth of the devices, give or take.
        let mut slots = [0usize; 10];
        for p in &phases {
            slots[(p.as_millis() / 100) as usize] += 1;
        }
        assert!(slots.iter().all(|n| (60..=140).contains(n)), "{slots:?}");
    }
}
