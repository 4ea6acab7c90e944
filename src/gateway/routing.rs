//! Inbound stanzas: the routing header checked, refused stanzas answered, messages and
//! iqs handed to their handlers; disco, ping and version answered here.

use std::time::Instant;

use tokio_xmpp::minidom::Element;
use xmpp_parsers::disco::{DiscoInfoQuery, DiscoItemsQuery, DiscoItemsResult, Item};
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::ns;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType};
use xmpp_parsers::version::VersionResult;

use super::{no_such_device, Device, Gateway};
use crate::access;
use crate::xmpp::disco::{self, domain_info};
use crate::xmpp::guard::{Refusal, Violation};
use crate::xmpp::stanza::{clip, Header, Kind};

impl Gateway {
    pub(super) async fn handle(&mut self, el: Element) {
        let refusal = Refusal::of(&el);
        let h = match Header::parse(&el) {
            Ok(h) => h,
            Err(e) => {
                if let Some(suppressed) = self.unroutable_log.allow(Instant::now()) {
                    tracing::warn!(error = %e, stanza = el.name(), refused = refusal.map(|r| r.violation.as_str()),
                        suppressed, "unroutable stanza dropped");
                }
                return;
            }
        };
        if h.to.domain().as_str() != self.domain() {
            self.on_other_domain(&h).await;
            return;
        }
        if let Some(r) = refusal {
            self.on_refused(&h, r).await;
            return;
        }
        match h.kind {
            Kind::Presence => self.on_presence(&h).await,
            Kind::Iq => self.on_iq(&h, &el).await,
            Kind::Message => self.on_message(&h, &el).await,
        }
    }

    /// A stanza for a domain this gateway does not serve. The server routed it here
    /// because it routes several domains to this component: ejabberd does so for every
    /// domain of an `ejabberd_service` listener (`global_routes`, on by default) to
    /// whichever component authenticated on it. A request is answered with an error
    /// from the JID it was addressed to, so that its sender learns at once instead of
    /// waiting for a time-out; what only informs (a result, an error, an available
    /// presence) is not answered, so that two entities can never bounce errors
    /// between them.
    pub(super) async fn on_other_domain(&mut self, h: &Header) {
        let answer = match h.kind {
            Kind::Iq => matches!(h.type_.as_deref(), Some("get" | "set")),
            // RFC 6121 §8.5.2: a headline is dropped silently, as for an unknown account.
            Kind::Message => !matches!(h.type_.as_deref(), Some("error" | "headline")),
            Kind::Presence => matches!(h.type_.as_deref(), Some("subscribe" | "probe")),
        };
        if let Some(suppressed) = self.other_domain_log.allow(Instant::now()) {
            tracing::warn!(to = %h.to, from = %h.from, stanza = ?h.kind, answered = answer, suppressed,
                "stanza for a domain this gateway does not serve: the XMPP server routes {} to \
                 this component (on ejabberd, give each gateway its own ejabberd_service \
                 listener, or set global_routes: false)", h.to.domain());
        }
        if !answer {
            return;
        }
        let text = format!(
            "{} is not served here: this component is {}",
            clip(h.to.domain().as_str()),
            self.domain()
        );
        self.send(h.error(
            ErrorType::Cancel,
            DefinedCondition::ItemNotFound,
            &text,
            None,
        ))
        .await;
    }

    /// A stanza the guard refused for breaking a bound: only its routing header is left.
    /// A request gets `policy-violation`; what only informs (presence, a bounce, an iq
    /// response) is handled by its header alone, as it would have been whole.
    pub(super) async fn on_refused(&mut self, h: &Header, r: Refusal) {
        let sender = h.from.to_bare().to_string();
        if let Some(suppressed) = self.refused_log.allow(&sender, Instant::now()) {
            tracing::warn!(from = %h.from, to = %h.to, stanza = ?h.kind, bytes = r.size,
                bound = r.violation.as_str(), limit = r.limit, suppressed, "inbound stanza refused: {r}");
        }
        let request = match h.kind {
            Kind::Iq => matches!(h.type_.as_deref(), Some("get" | "set")),
            Kind::Message => h.type_.as_deref() != Some("error"),
            Kind::Presence => false,
        };
        if !request {
            match h.kind {
                Kind::Presence => self.on_presence(h).await,
                Kind::Message => self.forget_requester(&h.from.to_string(), "message bounced"),
                Kind::Iq => self.on_iq_response(h).await,
            }
            return;
        }
        if h.kind == Kind::Iq && h.id.is_none() {
            return;
        }
        let (type_, condition) = match r.violation {
            Violation::Busy => (ErrorType::Wait, DefinedCondition::ResourceConstraint),
            _ => (ErrorType::Modify, DefinedCondition::PolicyViolation),
        };
        let text = format!("stanza refused: {r}");
        self.send(h.error(type_, condition, &text, None)).await;
    }

    /// The device a stanza is for, if it exists and the sender may see it.
    pub(super) fn visible_device(&self, h: &Header) -> Option<&Device> {
        let node = h.to.node()?;
        let dev = self.device_at(node.as_str())?;
        access::may_see(&self.cfg.access, &dev.cfg.access, &h.from.to_bare()).then_some(dev)
    }

    pub(super) async fn on_message(&mut self, h: &Header, el: &Element) {
        if h.type_.as_deref() == Some("error") {
            // A bounce: the requester is gone. Stop working for it.
            self.forget_requester(&h.from.to_string(), "message bounced");
            return;
        }
        if h.to.node().is_none() {
            return;
        }
        if let Some(dev) = self.visible_device(h) {
            let id = dev.cfg.id.clone();
            if let Some(set) = el.get_child("set", crate::xmpp::payload::control::NS) {
                self.on_message_set(h, &id, set).await;
            }
        } else {
            // RFC 6121 §8.5.2: a message to an account that does not exist.
            self.send(no_such_device(h)).await;
        }
    }

    pub(super) async fn on_iq(&mut self, h: &Header, el: &Element) {
        let is_request = matches!(h.type_.as_deref(), Some("get" | "set"));
        if !is_request {
            if !matches!(h.type_.as_deref(), Some("result" | "error")) {
                self.send(h.error(
                    ErrorType::Modify,
                    DefinedCondition::BadRequest,
                    "iq type must be get, set, result or error",
                    None,
                ))
                .await;
            } else {
                self.on_iq_response(h).await;
            }
            return;
        }
        if h.id.is_none() {
            // The id is required (RFC 6120 §8.1.3), yet a request with a sender is still
            // answered (§8.2.3): without an id, as there is none to echo, like Prosody
            // answers its own clients. An error is never answered, so this cannot loop.
            self.send(h.error(
                ErrorType::Modify,
                DefinedCondition::BadRequest,
                "an iq request needs an id",
                None,
            ))
            .await;
            return;
        }
        let device_id = if h.to.node().is_some() {
            match self.visible_device(h) {
                Some(d) => Some(d.cfg.id.clone()),
                None => {
                    self.send(no_such_device(h)).await;
                    return;
                }
            }
        } else {
            None
        };
        let mut children = el.children();
        let (Some(payload), None) = (children.next(), children.next()) else {
            self.send(h.error(
                ErrorType::Modify,
                DefinedCondition::BadRequest,
                "an iq request carries exactly one payload element",
                None,
            ))
            .await;
            return;
        };
        if let Some(id) = &device_id {
            if self.on_iot_iq(h, id, payload).await {
                return;
            }
        }
        let device = device_id
            .as_ref()
            .and_then(|id| self.devices.get(id))
            .map(|d| &**d);
        let reply = self.answer_iq(h, device, payload);
        self.send(reply).await;
    }

    pub(super) fn answer_iq(
        &self,
        h: &Header,
        device: Option<&Device>,
        payload: &Element,
    ) -> Element {
        let get = h.type_.as_deref() == Some("get");
        let bad = |text: &str| h.error(ErrorType::Modify, DefinedCondition::BadRequest, text, None);
        let not_found = |text: &str| {
            h.error(
                ErrorType::Cancel,
                DefinedCondition::ItemNotFound,
                text,
                None,
            )
        };
        match (get, payload.ns().as_str(), payload.name()) {
            (true, ns::PING, "ping") => h.result(None),
            (true, ns::VERSION, "query") => h.result(Some(
                VersionResult {
                    name: "fieldgate".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    os: Some(std::env::consts::OS.into()),
                }
                .into(),
            )),
            (true, ns::DISCO_INFO, "query") => {
                let q = match DiscoInfoQuery::try_from(payload.clone()) {
                    Ok(q) => q,
                    Err(e) => return bad(&format!("invalid disco#info query: {e}")),
                };
                let info = match device {
                    Some(d) => d.disco.answer(q.node.as_deref()),
                    None if q.node.is_none() => Some(domain_info()),
                    None => None,
                };
                match info {
                    Some(i) => h.result(Some(i.into())),
                    None => not_found("unknown disco node"),
                }
            }
            (true, ns::DISCO_ITEMS, "query") => {
                let q = match DiscoItemsQuery::try_from(payload.clone()) {
                    Ok(q) => q,
                    Err(e) => return bad(&format!("invalid disco#items query: {e}")),
                };
                if q.node.is_some() {
                    return not_found("unknown disco node");
                }
                let items = match device {
                    Some(_) => vec![],
                    None => self.visible_items(&h.from.to_bare()),
                };
                // Room for the iq around the items and the <set/> after them.
                let budget = self.cfg.xmpp.max_outbound_stanza_size.saturating_sub(2048);
                match disco::page(items, q.rsm.as_ref(), budget) {
                    Ok((items, rsm)) => h.result(Some(
                        DiscoItemsResult {
                            node: None,
                            items,
                            rsm,
                        }
                        .into(),
                    )),
                    Err(e) => not_found(&e.to_string()),
                }
            }
            _ => h.error(
                ErrorType::Cancel,
                DefinedCondition::ServiceUnavailable,
                &format!(
                    "unsupported payload <{} xmlns='{}'/>",
                    clip(payload.name()),
                    clip(&payload.ns())
                ),
                None,
            ),
        }
    }

    pub(super) fn visible_items(&self, who: &BareJid) -> Vec<Item> {
        self.order
            .iter()
            .map(|id| &self.devices[id])
            .filter(|d| access::may_see(&self.cfg.access, &d.cfg.access, who))
            .filter_map(|d| {
                Some(Item {
                    jid: Jid::new(&d.bare).ok()?,
                    node: None,
                    name: Some(d.cfg.name.clone()),
                })
            })
            .collect()
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::super::testing::{condition, device, el, gateway, TestGateway, ALICE};
    use crate::xmpp::link::Outbound;

    /// Everything the gateway sent so far.
    fn sent(t: &mut TestGateway) -> Vec<Element> {
        let mut out = Vec::new();
        while let Ok(o) = t.out.try_recv() {
            out.extend(Outbound::into_vec(o));
        }
        out
    }

    /// `xml` (an iq, message or presence) in the component namespace.
    fn stanza(xml: &str) -> Element {
        let (name, rest) = xml[1..].split_once(' ').unwrap();
        el(&format!("<{name} xmlns='{}' {rest}", ns::COMPONENT))
    }

    use super::*;

    /// What ejabberd hands one component when one listener serves two: stanzas for the
    /// other gateway's domain. A request is answered at once, from the JID it was
    /// addressed to; a response never is.
    #[tokio::test]
    async fn a_request_for_another_domain_is_answered_with_an_error() {
        let mut t = gateway(&device("pump"));
        let other = "pump@gw2.example.org";
        let requests = [
            format!("<iq type='get' id='q1' from='{ALICE}' to='{other}'><ping xmlns='urn:xmpp:ping'/></iq>"),
            format!("<iq type='set' id='q1' from='{ALICE}' to='gw2.example.org'><query xmlns='urn:x'/></iq>"),
            format!("<message id='q1' from='{ALICE}' to='{other}'><body>hi</body></message>"),
            format!("<message type='chat' id='q1' from='{ALICE}' to='{other}'><body>hi</body></message>"),
            format!("<presence type='subscribe' id='q1' from='{ALICE}' to='{other}'/>"),
            format!("<presence type='probe' id='q1' from='{ALICE}' to='{other}'/>"),
        ];
        for xml in requests {
            let request = stanza(&xml);
            t.gw.handle(request.clone()).await;
            let out = sent(&mut t);
            assert_eq!(out.len(), 1, "one answer to {xml}");
            let reply = &out[0];
            assert_eq!(reply.name(), request.name(), "{xml}");
            assert_eq!(reply.attr("type"), Some("error"), "{xml}");
            assert_eq!(
                reply.attr("from"),
                request.attr("to"),
                "from the addressed JID: {xml}"
            );
            assert_eq!(reply.attr("to"), Some(ALICE));
            assert_eq!(reply.attr("id"), Some("q1"));
            assert_eq!(condition(reply).as_deref(), Some("item-not-found"), "{xml}");
            let text = reply
                .get_child("error", ns::COMPONENT)
                .and_then(|e| e.get_child("text", ns::XMPP_STANZAS))
                .map(Element::text)
                .unwrap_or_default();
            assert!(
                text.contains("gw2.example.org"),
                "the text names the domain: {text}"
            );
        }
    }

    #[tokio::test]
    async fn a_response_or_a_notice_for_another_domain_is_not_answered() {
        let mut t = gateway(&device("pump"));
        let other = "pump@gw2.example.org";
        let quiet = [
            format!("<iq type='result' id='q1' from='{ALICE}' to='{other}'/>"),
            format!("<iq type='error' id='q1' from='{ALICE}' to='{other}'/>"),
            format!("<message type='error' id='q1' from='{ALICE}' to='{other}'/>"),
            format!(
                "<message type='headline' from='{ALICE}' to='{other}'><body>x</body></message>"
            ),
            format!("<presence from='{ALICE}' to='{other}'/>"),
            format!("<presence type='unavailable' from='{ALICE}' to='{other}'/>"),
            format!("<presence type='error' from='{ALICE}' to='{other}'/>"),
            format!("<presence type='subscribed' from='{ALICE}' to='{other}'/>"),
            format!("<presence type='unsubscribe' from='{ALICE}' to='{other}'/>"),
        ];
        for xml in quiet {
            t.gw.handle(stanza(&xml)).await;
            assert!(sent(&mut t).is_empty(), "no answer to {xml}");
        }
        // The gateway's own domain is still served.
        let ping = el(&format!(
            "<iq xmlns='jabber:component:accept' type='get' id='p' from='{ALICE}' \
             to='pump@{}'><ping xmlns='urn:xmpp:ping'/></iq>",
            super::super::testing::DOMAIN
        ));
        t.gw.handle(ping).await;
        let out = sent(&mut t);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].attr("type"), Some("result"));
    }
}
