//! The fuzz corpora of the payload and stanza targets run through the whole gateway: each
//! input that parses is sent to a test gateway as a stanza from a permitted requester (as
//! it is, when it is a stanza, or as the payload of an iq get and an iq set to a device),
//! and every reply must be well-formed XML. A test, not a fuzz target: the test gateway
//! exists only in test builds.

use std::path::PathBuf;

use tokio_xmpp::minidom::Element;
use xmpp_parsers::ns;

use super::testing::{device, gateway, ALICE, DOMAIN};
use crate::xmpp::link::Outbound;
use crate::xmpp::stanza::BuilderExt;

/// `payload` as the only child of an iq `type_` from alice to the device `pump`.
fn iq(type_: &str, payload: &Element) -> Element {
    Element::builder("iq", ns::COMPONENT)
        .a("type", type_)
        .a("id", "fuzz")
        .a("from", ALICE)
        .a("to", format!("pump@{DOMAIN}"))
        .append(payload.clone())
        .build()
}

#[tokio::test]
async fn corpus_inputs_through_the_gateway() {
    let mut t = gateway(&device("pump"));
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut sent = 0;
    for target in ["sensordata", "control", "events", "presence_disco"] {
        let Ok(dir) = std::fs::read_dir(root.join(target)) else {
            continue;
        };
        let mut files: Vec<_> = dir.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        files.sort();
        for file in files {
            let Some(el) = std::fs::read(&file)
                .ok()
                .and_then(|d| crate::fuzzing::xml(&d))
            else {
                continue;
            };
            // A stanza as it is, and its children as payloads to the device.
            let payloads: Vec<&Element> = if el.ns() == ns::COMPONENT {
                el.children().collect()
            } else {
                vec![&el]
            };
            let mut stanzas: Vec<Element> = payloads
                .into_iter()
                .flat_map(|p| [iq("get", p), iq("set", p)])
                .collect();
            if el.ns() == ns::COMPONENT {
                stanzas.push(el.clone());
            }
            for stanza in stanzas {
                t.gw.handle(stanza).await;
                sent += 1;
                while let Ok(out) = t.out.try_recv() {
                    let texts: Vec<String> = match out {
                        Outbound::One(e) => vec![String::from(&e)],
                        Outbound::Batch(v) => v.iter().map(String::from).collect(),
                        Outbound::Text(v) | Outbound::Tracked { stanzas: v, .. } => v,
                    };
                    for text in texts {
                        let well_formed = text.parse::<Element>().is_ok()
                            || crate::xmpp::stanza_text::parse(&text).is_some();
                        assert!(well_formed, "{}: malformed reply {text}", file.display());
                    }
                }
            }
        }
    }
    assert!(sent > 0, "no corpus under {}", root.display());
}
