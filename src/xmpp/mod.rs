//! The XMPP side of the gateway. Nothing here knows any field bus.
//!
//! - the component link and what guards it: [`link`], [`tls`] (TLS under it),
//!   [`guard`] (inbound bounds), [`size`] (outbound bounds);
//! - stanzas: [`stanza`] (routing headers, errors), [`presence`], [`disco`], [`delay`]
//!   (XEP-0203 stamps on events delivered late), and the
//!   typed IoT payloads in [`payload`] (XEP-0323, XEP-0325, IoT events) — data only;
//! - behaviour on top of the payloads: [`readout`] (runs one XEP-0323 readout),
//!   [`parameters`] (XEP-0325 parameters checked against a device's catalogue, the
//!   getForm form), [`subscription`] (one IoT-events subscription: thresholds, intervals).

pub mod delay;
pub mod disco;
pub mod fair;
pub mod fields_text;
pub mod guard;
pub mod link;
pub mod parameters;
pub mod payload;
pub mod presence;
pub mod readout;
pub mod size;
pub mod stanza;
pub mod stanza_text;
pub mod subscription;
pub mod tls;
