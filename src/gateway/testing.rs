//! A gateway actor for unit tests: configured from TOML, with sim devices, no link; what
//! it sends is read from the outbound queue.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use fieldgate_api::EventSink;
use tokio::sync::{mpsc, watch};
use tokio_xmpp::minidom::Element;
use xmpp_parsers::ns;

use super::Gateway;
use crate::config;
use crate::xmpp::link::Outbound;
use crate::xmpp::stanza::Header;

/// The component domain of [`gateway`].
pub const DOMAIN: &str = "gw.example.org";

/// A reader and controller of every device, a subscriber and reader who may not
/// control, and somebody with no right at all.
pub const ALICE: &str = "alice@example.org/app";
pub const BOB: &str = "bob@example.org/app";
pub const MALLORY: &str = "mallory@elsewhere.example/x";

/// The gateway and its outbound queue. Keep the receivers alive: the actor's sends fail
/// (and some are awaited) once they are gone.
pub struct TestGateway {
    pub gw: Gateway,
    pub out: mpsc::Receiver<Outbound>,
    /// What the actor hands the persister; [`TestGateway::persist`] runs a real one.
    pub commits: Option<mpsc::Receiver<crate::state::Commit<Element>>>,
    _events: mpsc::Receiver<fieldgate_api::DeviceEvent>,
}

impl TestGateway {
    /// Runs a persister on `dir` (empty at start) for this gateway, as `run` does: what
    /// it releases goes to the outbound queue, failed subscriptions to the receiver.
    pub fn persist(
        &mut self,
        dir: &Path,
    ) -> (
        tokio::task::JoinHandle<u64>,
        mpsc::Receiver<crate::state::Failed<Element>>,
    ) {
        let (failed_tx, failed) = mpsc::channel(16);
        let task = tokio::spawn(crate::state::persister(
            dir.to_owned(),
            Default::default(),
            self.commits.take().expect("one persister"),
            self.gw.out.clone(),
            failed_tx,
        ));
        (task, failed)
    }
}

/// A gateway with `devices` (TOML `[[device]]` tables) where alice may read and control
/// everything, and bob subscribe and read. Needs a Tokio runtime: adapters are started.
pub fn gateway(devices: &str) -> TestGateway {
    gateway_with(
        "subscribe = [\"alice@example.org\", \"bob@example.org\"]\n\
         read = [\"alice@example.org\", \"bob@example.org\"]\n\
         control = [\"alice@example.org\"]\n",
        devices,
    )
}

/// A gateway with `access` (the body of the `[access]` section) and `devices`.
pub fn gateway_with(access: &str, devices: &str) -> TestGateway {
    let text = format!(
        "[xmpp]\nserver = \"127.0.0.1:5347\"\ndomain = \"{DOMAIN}\"\nsecret = \"s\"\n\
         [access]\n{access}[state]\ndir = \"/nonexistent-test-state\"\n{devices}"
    );
    let cfg = config::parse(Path::new("test.toml"), &text).expect("test config");
    let (out_tx, out) = mpsc::channel(1024);
    let (commit_tx, commits) = mpsc::channel(16);
    let (ev_tx, events) = mpsc::channel(1024);
    let (settings, _) = watch::channel(cfg.xmpp.clone());
    let mut gw = Gateway::new(
        cfg,
        Default::default(),
        Default::default(),
        out_tx,
        commit_tx,
        EventSink::new(ev_tx, Arc::new(AtomicU64::new(0))),
        settings,
    );
    // As if the component link were up: what the gateway sends reaches `out`.
    gw.link_up = true;
    TestGateway {
        gw,
        out,
        commits: Some(commits),
        _events: events,
    }
}

/// A sim device `id` with an int field `level`, a writable double `setpoint` (0 to 10)
/// and a read-only string `label`.
pub fn device(id: &str) -> String {
    format!(
        "[[device]]\nid = \"{id}\"\nadapter = \"sim\"\n\
         [[device.field]]\nname = \"level\"\ntype = \"int\"\n\
         [[device.field]]\nname = \"setpoint\"\ntype = \"double\"\nwritable = true\nmin = 0.0\nmax = 10.0\n\
         [[device.field]]\nname = \"label\"\ntype = \"string\"\n"
    )
}

/// The routing header of an iq `type` from `from` to `<to>@DOMAIN`.
pub fn iq(type_: &str, from: &str, to: &str) -> Header {
    let el: Element = format!(
        "<iq xmlns='{}' type='{type_}' id='q1' from='{from}' to='{to}@{DOMAIN}'/>",
        ns::COMPONENT
    )
    .parse()
    .unwrap();
    Header::parse(&el).unwrap()
}

impl TestGateway {
    /// The next adapter task that ended unexpectedly (within 5 s).
    pub async fn exits(&mut self) -> crate::devices::Exit {
        tokio::time::timeout(std::time::Duration::from_secs(5), self.gw.exits.recv())
            .await
            .expect("an adapter exit within 5 s")
            .expect("the runtimes hold the sender")
    }
}

/// `xml` as an element.
pub fn el(xml: &str) -> Element {
    xml.parse().unwrap()
}

/// The defined condition of an error reply, or `None` for a result.
pub fn condition(reply: &Element) -> Option<String> {
    let err = reply.get_child("error", ns::COMPONENT)?;
    err.children()
        .find(|c| c.ns() == ns::XMPP_STANZAS && c.name() != "text")
        .map(|c| c.name().to_owned())
}
