//! A broker session, shared by the devices that name the broker: one rumqttc client and
//! its event loop in a task of their own.
//!
//! - **Subscriptions survive reconnects.** rumqttc does not subscribe again after it
//!   reconnects (bytebeamio/rumqtt#250): on every CONNACK without a session present,
//!   every filter in use is subscribed again; with a session present, only those the
//!   broker has not seen yet.
//! - **Nothing handed over is lost.** Messages are acknowledged by hand, once their
//!   values are in the core's queue; a message that does not decode is acknowledged too
//!   (and counted), or it would hold an in-flight slot and stall the session.
//! - **Commands learn their fate.** A publish is answered when it is written (QoS 0) or
//!   when the broker acknowledges it (PUBACK at QoS 1, PUBCOMP at QoS 2).
//! - **Reconnects back off**, doubling from `reconnect_min` to `reconnect_max`, jittered;
//!   each failed attempt is one log line.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use fieldgate_api::{backoff, AdapterError, Reason};
use rumqttc::QoS;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::config::Broker;
use crate::device::Binding;
use crate::router::Router;
use crate::wire::{self, Client, Event, Loop};

/// Requests queued for the event loop before a publisher waits. Acknowledgements go
/// there too, and must never find it full: rumqttc's own fallback queue is served one
/// request per timer tick (1 ms), and once it holds one, the acknowledgements behind it
/// pile up until every message waits a millisecond (QoS 1 at ~1,000 messages/s). A
/// broker can have at most 65,535 messages unacknowledged (packet ids), so room for that
/// many plus the commands bounds the queue without ever filling it with acks.
const REQUEST_QUEUE: usize = 65_535 + 256;

/// The state of the connection to the broker, as the devices see it.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkStatus {
    /// Not connected yet since the session started.
    Connecting,
    /// Connected.
    Up,
    /// The connection failed or was lost; why.
    Down(Reason),
}

/// What the devices of a broker share with its session task.
pub struct Shared {
    /// The broker's configuration.
    pub broker: Broker,
    client: Client,
    /// Which devices listen on which filters.
    pub router: RwLock<Router<Binding>>,
    status: watch::Sender<LinkStatus>,
    /// Publishes in flight, so that each is answered when the broker acknowledges it.
    outgoing: Mutex<InFlight>,
    /// Holds the order of `outgoing.queued` equal to that of the client's queue.
    publish_order: tokio::sync::Mutex<()>,
    /// Filters the broker has been asked for in this session.
    subscribed: Mutex<HashSet<String>>,
    /// Set once every device of the configuration listens: only then does the session
    /// connect, so that what a persistent session kept finds its device.
    go: watch::Sender<bool>,
    /// Cancelled when the session stops.
    cancel: CancellationToken,
}

type Reply = oneshot::Sender<Result<(), AdapterError>>;

#[derive(Default)]
struct InFlight {
    /// Publishes handed to the client, not written yet.
    queued: VecDeque<(QoS, Reply)>,
    /// Written, waiting for the broker; `None` once answered (the connection dropped)
    /// but still recognised if the client sends it again.
    by_pkid: HashMap<u16, Option<Reply>>,
}

impl Shared {
    /// The connection's state, and a receiver of its changes.
    pub fn status(&self) -> watch::Receiver<LinkStatus> {
        self.status.subscribe()
    }

    /// Subscribes to `filters` now, if connected (else at the next CONNACK).
    pub fn subscribe(&self, filters: Vec<String>) {
        if *self.status.borrow() != LinkStatus::Up || filters.is_empty() {
            return;
        }
        let qos = qos(self.broker.qos);
        let mut subscribed = self.subscribed.lock().unwrap_or_else(|p| p.into_inner());
        let fresh: Vec<String> = filters
            .into_iter()
            .filter(|f| subscribed.insert(f.clone()))
            .collect();
        drop(subscribed);
        self.send_subscribe(fresh, qos);
    }

    fn send_subscribe(&self, filters: Vec<String>, qos: QoS) {
        // A SUBSCRIBE carries many filters; keep each packet small.
        for chunk in filters.chunks(64) {
            if let Err(e) = self.client.try_subscribe_many(chunk, qos) {
                // The queue is full: the filters are asked again at the next CONNACK.
                tracing::warn!(broker = %self.broker.name, error = %e, "subscribe not queued");
                let mut subscribed = self.subscribed.lock().unwrap_or_else(|p| p.into_inner());
                for f in chunk {
                    subscribed.remove(f);
                }
            }
        }
    }

    /// Unsubscribes from filters no device listens on any more.
    pub fn unsubscribe(&self, filters: Vec<String>) {
        let mut subscribed = self.subscribed.lock().unwrap_or_else(|p| p.into_inner());
        for f in filters {
            if subscribed.remove(&f) {
                self.client.try_unsubscribe(f);
            }
        }
    }

    /// Publishes a command; the receiver answers when the broker has it.
    pub async fn publish(
        &self,
        topic: String,
        qos_level: u8,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<oneshot::Receiver<Result<(), AdapterError>>, AdapterError> {
        if *self.status.borrow() != LinkStatus::Up {
            return Err(AdapterError::LinkDown(self.down_reason()));
        }
        let (tx, rx) = oneshot::channel();
        let qos = qos(qos_level);
        let _order = self.publish_order.lock().await;
        self.lock_outgoing().queued.push_back((qos, tx));
        if let Err(e) = self.client.publish(topic, qos, retain, payload).await {
            self.lock_outgoing().queued.pop_back();
            return Err(AdapterError::LinkDown(Reason::new(format!(
                "the broker session is stopping: {e}"
            ))));
        }
        Ok(rx)
    }

    /// Whether the session is stopping (the gateway is, or the broker was removed).
    pub fn stopping(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Lets the session connect: every device of the configuration listens now.
    pub fn release(&self) {
        self.go.send_replace(true);
    }

    /// Why the broker cannot be reached, for device states and errors.
    pub fn down_reason(&self) -> Reason {
        match &*self.status.borrow() {
            LinkStatus::Down(why) => why.clone(),
            _ => Reason::new("broker unreachable: not connected yet"),
        }
    }

    fn lock_outgoing(&self) -> std::sync::MutexGuard<'_, InFlight> {
        self.outgoing.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The QoS of a configured level (validated 0..=2).
pub fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// Where the broker is, for log lines and control-right texts.
fn address(b: &Broker) -> String {
    format!("{}:{}", b.host, b.port())
}

/// Starts the session of `broker`; its task ends when `cancel` is cancelled.
pub fn start(
    broker: Broker,
    cancel: CancellationToken,
) -> (Arc<Shared>, tokio::task::JoinHandle<()>) {
    let (client, eventloop, unusable) = match wire::connect(&broker, REQUEST_QUEUE) {
        Ok((c, l)) => (c, Some(l), None),
        Err(why) => {
            // A client that will never connect, so that the devices have a session to
            // hold; the reason is their status until the configuration is mended.
            let mut plain = broker.clone();
            (plain.password_file, plain.password_env, plain.tls) = (None, None, None);
            let (c, _) = wire::connect(&plain, REQUEST_QUEUE)
                .expect("a broker without files or variables always has options");
            (c, None, Some(why))
        }
    };
    let (status, _) = watch::channel(LinkStatus::Connecting);
    let shared = Arc::new(Shared {
        broker,
        client,
        router: RwLock::new(Router::default()),
        status,
        outgoing: Mutex::default(),
        publish_order: tokio::sync::Mutex::new(()),
        subscribed: Mutex::default(),
        go: watch::channel(false).0,
        cancel: cancel.clone(),
    });
    let task = {
        let shared = shared.clone();
        let span = tracing::info_span!("mqtt", broker = %shared.broker.name);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                match (eventloop, unusable) {
                    (Some(eventloop), _) => run(shared, eventloop, cancel).await,
                    (None, why) => {
                        let why = why.unwrap_or_default();
                        tracing::error!(error = %why, "broker session cannot start");
                        shared
                            .status
                            .send_replace(LinkStatus::Down(Reason::with_detail(
                                "broker unreachable: the gateway's broker settings are unusable",
                                format!("broker unreachable: {why}"),
                            )));
                        cancel.cancelled().await;
                    }
                }
            },
            span,
        ))
    };
    (shared, task)
}

async fn run(shared: Arc<Shared>, mut eventloop: Loop, cancel: CancellationToken) {
    let mut go = shared.go.subscribe();
    tokio::select! {
        _ = cancel.cancelled() => return,
        _ = go.wait_for(|g| *g) => {}
    }
    let mut failures: u32 = 0;
    let b = shared.broker.clone();
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => break,
            e = eventloop.poll() => e,
        };
        match event {
            Ok(Event::Connected { session_present }) => {
                failures = 0;
                tracing::info!(broker = %address(&b), session_present, "connected to the broker");
                on_connected(&shared, session_present);
            }
            Ok(Event::Message(m)) => {
                crate::device::on_message(&shared, &m.topic, &m.payload).await;
                // Acknowledged once its values are in the core (or it was counted as
                // unusable): a crash before this point has the broker send it again.
                if !shared.client.try_ack(m.qos, m.pkid) {
                    eventloop.ack(m.qos, m.pkid);
                }
            }
            Ok(Event::SubscriptionRefused(code)) => {
                tracing::error!(broker = %address(&b), code = %code,
                    "the broker refused a subscription (check its ACL for the gateway's user)");
            }
            Ok(Event::Acknowledged(pkid)) => answered(&shared, pkid),
            Ok(Event::Written(pkid)) => written(&shared, pkid),
            Ok(Event::DisconnectWritten | Event::Other) => {}
            Err(why) => {
                let delay = backoff(failures, b.reconnect_min.0, b.reconnect_max.0);
                failures = failures.saturating_add(1);
                tracing::warn!(broker = %address(&b), error = %why, attempt = failures,
                    retry_in_ms = delay.as_millis() as u64, "broker connection failed");
                shared
                    .status
                    .send_replace(LinkStatus::Down(Reason::with_detail(
                        "broker unreachable",
                        format!("broker unreachable: {} ({why})", address(&b)),
                    )));
                connection_lost(&shared);
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    // A clean goodbye, so that the broker does not publish a will or keep waiting.
    if *shared.status.borrow() == LinkStatus::Up && shared.client.try_disconnect() {
        eventloop.flush_disconnect(Duration::from_secs(1)).await;
    }
    connection_lost(&shared);
}

/// A CONNACK: the filters the broker lacks are subscribed (all of them unless it kept
/// the session), and the devices learn the broker is back.
fn on_connected(shared: &Shared, session_present: bool) {
    if !session_present {
        shared
            .subscribed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        // Nothing sent in an earlier session will be acknowledged now.
        shared.lock_outgoing().by_pkid.clear();
    }
    // Up before the filters are read: a device that adds its filters meanwhile either
    // sees the session up and subscribes itself, or is read here. `subscribed` keeps a
    // filter from being asked twice.
    shared.status.send_replace(LinkStatus::Up);
    let filters = shared
        .router
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .filters();
    let fresh: Vec<String> = {
        let mut subscribed = shared.subscribed.lock().unwrap_or_else(|p| p.into_inner());
        filters
            .into_iter()
            .filter(|f| subscribed.insert(f.clone()))
            .collect()
    };
    if !fresh.is_empty() {
        tracing::info!(filters = fresh.len(), "subscribing");
    }
    shared.send_subscribe(fresh, qos(shared.broker.qos));
}

/// The client wrote publish `pkid` (0 for QoS 0).
fn written(shared: &Shared, pkid: u16) {
    let mut out = shared.lock_outgoing();
    if pkid != 0 && out.by_pkid.contains_key(&pkid) {
        return; // sent again after a reconnect
    }
    let Some((qos, reply)) = out.queued.pop_front() else {
        return;
    };
    if qos == QoS::AtMostOnce || pkid == 0 {
        let _ = reply.send(Ok(()));
    } else {
        out.by_pkid.insert(pkid, Some(reply));
    }
}

/// The broker acknowledged publish `pkid`.
fn answered(shared: &Shared, pkid: u16) {
    if let Some(Some(reply)) = shared.lock_outgoing().by_pkid.remove(&pkid) {
        let _ = reply.send(Ok(()));
    }
}

/// The connection is gone: publishes waiting for the broker are answered "link down"
/// (a persistent session may still deliver them: at least once, not exactly once).
fn connection_lost(shared: &Shared) {
    let reason = shared.down_reason();
    let mut out = shared.lock_outgoing();
    for reply in out.by_pkid.values_mut() {
        if let Some(r) = reply.take() {
            let _ = r.send(Err(AdapterError::LinkDown(reason.prefixed(
                "the connection dropped before the broker acknowledged the command: ",
            ))));
        }
    }
}
