//! The rule that turns a topic segment into a device id (a JID localpart).
