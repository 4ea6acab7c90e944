//! MQTT 3.1.1 and MQTT 5 behind one face: rumqttc has a client and event loop for each,
//! with the same shape and different types. The session needs only what both do: connect
//! (with session present or not), messages in, subscriptions, publishes and their
//! acknowledgements, and manual acknowledgement of messages.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5 as m5;
use rumqttc::{v5, Outgoing, QoS};

use crate::config::{Broker, Protocol};

/// A client of either protocol version.
#[derive(Clone)]
pub enum Client {
    /// MQTT 3.1.1.
    V4(rumqttc::AsyncClient),
    /// MQTT 5.
    V5(v5::AsyncClient),
}

/// An event loop of either protocol version.
#[allow(clippy::large_enum_variant)] // one per broker, polled in place
pub enum Loop {
    /// MQTT 3.1.1; whether credentials are configured.
    V4(rumqttc::EventLoop, bool),
    /// MQTT 5; whether credentials are configured.
    V5(v5::EventLoop, bool),
}

/// A message from the broker.
pub struct Message {
    /// Its topic (empty if the broker sent one that is not UTF-8).
    pub topic: String,
    /// Its payload.
    pub payload: Bytes,
    /// Its QoS.
    pub qos: QoS,
    /// Its packet id (0 at QoS 0).
    pub pkid: u16,
}

/// What the event loop reported, as far as the session cares.
pub enum Event {
    /// Connected; whether the broker kept the session.
    Connected {
        /// The broker's "session present" flag.
        session_present: bool,
    },
    /// A message.
    Message(Message),
    /// The broker refused a subscription (its return code).
    SubscriptionRefused(String),
    /// The broker acknowledged our publish (PUBACK or PUBCOMP).
    Acknowledged(u16),
    /// Our publish was written (0 for QoS 0).
    Written(u16),
    /// A DISCONNECT was written.
    DisconnectWritten,
    /// Anything else.
    Other,
}

/// The client options for `b`, the password and TLS material read now.
pub fn connect(b: &Broker, request_queue: usize) -> Result<(Client, Loop), String> {
    // Read when the configuration was (Broker::resolve); a file changed since takes
    // effect with the next reload.
    let password = b.secret.clone();
    let transport = match &b.tls {
        Some(tls) => {
            let config = crate::tls::client_config(tls).map_err(|e| format!("TLS: {e}"))?;
            Some(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(config),
            ))
        }
        None => None,
    };
    Ok(match b.protocol {
        Protocol::V311 => {
            let creds = b.username.is_some();
            let mut o = rumqttc::MqttOptions::new(b.client_id(), b.host.clone(), b.port());
            o.set_keep_alive(b.keep_alive.0);
            o.set_clean_session(b.clean_session);
            o.set_manual_acks(true);
            o.set_request_channel_capacity(request_queue);
            o.set_max_packet_size(b.max_packet, b.max_packet);
            if let Some(user) = &b.username {
                o.set_credentials(user.clone(), password.unwrap_or_default());
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            let (c, mut l) = rumqttc::AsyncClient::new(o, request_queue);
            l.set_network_options(no_delay(l.network_options()));
            (Client::V4(c), Loop::V4(l, creds))
        }
        Protocol::V5 => {
            let mut o = v5::MqttOptions::new(b.client_id(), b.host.clone(), b.port());
            o.set_keep_alive(b.keep_alive.0);
            o.set_clean_start(b.clean_session);
            if !b.clean_session {
                // MQTT 5 ends a session when the connection does, unless told otherwise.
                let secs = b.session_expiry.0.as_secs().min(u64::from(u32::MAX)) as u32;
                o.set_session_expiry_interval(Some(secs));
            }
            o.set_manual_acks(true);
            o.set_request_channel_capacity(request_queue);
            o.set_network_options(no_delay(o.network_options()));
            o.set_max_packet_size(Some(b.max_packet.min(u32::MAX as usize) as u32));
            if let Some(user) = &b.username {
                o.set_credentials(user.clone(), password.unwrap_or_default());
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            let (c, l) = v5::AsyncClient::new(o, request_queue);
            (Client::V5(c), Loop::V5(l, b.username.is_some()))
        }
    })
}

impl Client {
    /// Queues a SUBSCRIBE for `filters` without waiting.
    pub fn try_subscribe_many(&self, filters: &[String], qos: QoS) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .try_subscribe_many(
                    filters
                        .iter()
                        .map(|f| rumqttc::SubscribeFilter::new(f.clone(), qos)),
                )
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .try_subscribe_many(filters.iter().map(|f| m5::Filter::new(f.clone(), q5(qos))))
                .map_err(|e| e.to_string()),
        }
    }

    /// Queues an UNSUBSCRIBE without waiting.
    pub fn try_unsubscribe(&self, filter: String) {
        let _ = match self {
            Client::V4(c) => c.try_unsubscribe(filter).map_err(|e| e.to_string()),
            Client::V5(c) => c.try_unsubscribe(filter).map_err(|e| e.to_string()),
        };
    }

    /// Queues a publish, waiting for room in the queue.
    pub async fn publish(
        &self,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .publish(topic, qos, retain, payload)
                .await
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .publish(topic, q5(qos), retain, payload)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// Queues the acknowledgement of message `pkid` with the client's other requests;
    /// false when that queue is full.
    pub fn try_ack(&self, qos: QoS, pkid: u16) -> bool {
        if qos == QoS::AtMostOnce {
            return true;
        }
        match self {
            Client::V4(c) => {
                let mut p = rumqttc::Publish::new("", qos, Vec::new());
                p.pkid = pkid;
                c.try_ack(&p).is_ok()
            }
            Client::V5(c) => {
                let mut p = m5::Publish::new("", q5(qos), Vec::new(), None);
                p.pkid = pkid;
                c.try_ack(&p).is_ok()
            }
        }
    }

    /// Queues a DISCONNECT without waiting.
    pub fn try_disconnect(&self) -> bool {
        match self {
            Client::V4(c) => c.try_disconnect().is_ok(),
            Client::V5(c) => c.try_disconnect().is_ok(),
        }
    }
}

impl Loop {
    /// The next event, or why the connection failed.
    pub async fn poll(&mut self) -> Result<Event, String> {
        match self {
            Loop::V4(l, creds) => {
                use rumqttc::{Event as E, Packet as P};
                match l.poll().await.map_err(|e| describe_v4(&e, *creds))? {
                    E::Incoming(P::ConnAck(a)) => Ok(Event::Connected {
                        session_present: a.session_present,
                    }),
                    E::Incoming(P::Publish(p)) => Ok(Event::Message(Message {
                        topic: p.topic,
                        payload: p.payload,
                        qos: p.qos,
                        pkid: p.pkid,
                    })),
                    E::Incoming(P::SubAck(s)) => Ok(s
                        .return_codes
                        .iter()
                        .find(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                        .map_or(Event::Other, |c| {
                            Event::SubscriptionRefused(format!("{c:?}"))
                        })),
                    E::Incoming(P::PubAck(a)) => Ok(Event::Acknowledged(a.pkid)),
                    E::Incoming(P::PubComp(c)) => Ok(Event::Acknowledged(c.pkid)),
                    E::Outgoing(o) => Ok(outgoing(o)),
                    E::Incoming(_) => Ok(Event::Other),
                }
            }
            Loop::V5(l, creds) => {
                use m5::Packet as P;
                use v5::Event as E;
                match l.poll().await.map_err(|e| describe_v5(&e, *creds))? {
                    E::Incoming(P::ConnAck(a)) => Ok(Event::Connected {
                        session_present: a.session_present,
                    }),
                    E::Incoming(P::Publish(p)) => Ok(Event::Message(Message {
                        topic: String::from_utf8(p.topic.to_vec()).unwrap_or_default(),
                        payload: p.payload,
                        qos: q4(p.qos),
                        pkid: p.pkid,
                    })),
                    E::Incoming(P::SubAck(s)) => Ok(s
                        .return_codes
                        .iter()
                        .find(|c| !matches!(c, m5::SubscribeReasonCode::Success(_)))
                        .map_or(Event::Other, |c| {
                            Event::SubscriptionRefused(format!("{c:?}"))
                        })),
                    E::Incoming(P::PubAck(a)) => Ok(Event::Acknowledged(a.pkid)),
                    E::Incoming(P::PubComp(c)) => Ok(Event::Acknowledged(c.pkid)),
                    E::Outgoing(o) => Ok(outgoing(o)),
                    E::Incoming(_) => Ok(Event::Other),
                }
            }
        }
    }

    /// Acknowledges message `pkid` of `qos` through the event loop's own queue, for when
    /// the client's is full. That queue is served one request per timer tick (rumqttc
    /// sleeps `pending_throttle` before each, and a zero sleep waits for the next
    /// millisecond), so it is the fallback, not the way.
    pub fn ack(&mut self, qos: QoS, pkid: u16) {
        match (self, qos) {
            (_, QoS::AtMostOnce) => {}
            (Loop::V4(l, _), QoS::AtLeastOnce) => l
                .pending
                .push_back(rumqttc::Request::PubAck(rumqttc::PubAck::new(pkid))),
            (Loop::V4(l, _), QoS::ExactlyOnce) => l
                .pending
                .push_back(rumqttc::Request::PubRec(rumqttc::PubRec::new(pkid))),
            (Loop::V5(l, _), QoS::AtLeastOnce) => l
                .pending
                .push_back(v5::Request::PubAck(m5::PubAck::new(pkid, None))),
            (Loop::V5(l, _), QoS::ExactlyOnce) => l
                .pending
                .push_back(v5::Request::PubRec(m5::PubRec::new(pkid, None))),
        }
    }

    /// Polls until the DISCONNECT is written, for at most `limit`.
    pub async fn flush_disconnect(&mut self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            while let Ok(ev) = self.poll().await {
                if matches!(ev, Event::DisconnectWritten) {
                    break;
                }
            }
        })
        .await;
    }
}

/// Acknowledgements and commands are small packets written one at a time: Nagle's
/// algorithm would hold each behind the last one's TCP acknowledgement.
fn no_delay(mut n: rumqttc::NetworkOptions) -> rumqttc::NetworkOptions {
    n.set_tcp_nodelay(true);
    n
}

/// A QoS as MQTT 5's types spell it.
fn q5(qos: QoS) -> v5::mqttbytes::QoS {
    match qos {
        QoS::AtMostOnce => v5::mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => v5::mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => v5::mqttbytes::QoS::ExactlyOnce,
    }
}

/// A QoS of MQTT 5's types as the session spells it.
fn q4(qos: v5::mqttbytes::QoS) -> QoS {
    match qos {
        v5::mqttbytes::QoS::AtMostOnce => QoS::AtMostOnce,
        v5::mqttbytes::QoS::AtLeastOnce => QoS::AtLeastOnce,
        v5::mqttbytes::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn outgoing(o: Outgoing) -> Event {
    match o {
        Outgoing::Publish(pkid) => Event::Written(pkid),
        Outgoing::Disconnect => Event::DisconnectWritten,
        _ => Event::Other,
    }
}

/// A connection error of MQTT 3.1.1 as an operator wants to read it.
fn describe_v4(e: &rumqttc::ConnectionError, creds: bool) -> String {
    use rumqttc::{ConnectReturnCode as C, ConnectionError as E};
    match e {
        E::ConnectionRefused(code) => refused(match code {
            C::BadUserNamePassword => "bad user name or password",
            // Mosquitto answers a wrong password with this code, not the one above.
            C::NotAuthorized if creds => {
                "not authorised (bad user name or password, or the user may not connect)"
            }
            C::NotAuthorized => "not authorised (the broker wants a user name and password)",
            C::BadClientId => "client id rejected",
            C::RefusedProtocolVersion => "protocol version not supported",
            C::ServiceUnavailable => "service unavailable",
            C::Success => "success (unexpected)",
        }),
        E::Tls(t) => format!("TLS: {t}"),
        E::Io(io) => io_text(io),
        other => other.to_string(),
    }
}

/// A connection error of MQTT 5 as an operator wants to read it.
fn describe_v5(e: &v5::ConnectionError, creds: bool) -> String {
    use m5::ConnectReturnCode as C;
    use v5::ConnectionError as E;
    match e {
        E::ConnectionRefused(code) => match code {
            C::BadUserNamePassword => refused("bad user name or password"),
            C::NotAuthorized if creds => {
                refused("not authorised (bad user name or password, or the user may not connect)")
            }
            C::NotAuthorized => {
                refused("not authorised (the broker wants a user name and password)")
            }
            C::ClientIdentifierNotValid | C::BadClientId => refused("client id rejected"),
            other => refused(&format!("{other:?}")),
        },
        E::Tls(t) => format!("TLS: {t}"),
        E::Io(io) => io_text(io),
        other => other.to_string(),
    }
}

fn refused(why: &str) -> String {
    format!("the broker refused the connection: {why}")
}

/// rustls' verdicts arrive wrapped in an I/O error: show the verdict.
fn io_text(io: &std::io::Error) -> String {
    match io.get_ref() {
        Some(inner) => format!("{inner}"),
        None => io.to_string(),
    }
}
