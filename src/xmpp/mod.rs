//! The XMPP side of the gateway: the component link and the stanzas we speak.
//! Nothing here knows any field bus.

pub mod control;
pub mod disco;
pub mod events;
pub mod guard;
pub mod iot;
pub mod link;
pub mod presence;
pub mod readout;
pub mod size;
pub mod stanza;
