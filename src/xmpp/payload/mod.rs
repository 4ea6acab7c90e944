//! Typed payloads of the XMPP IoT protocols: XEP-0323 sensor data, XEP-0325 control and
//! the IoT events ProtoXEP, each parsed from and written to `minidom::Element`.
//!
//! Every payload implements `TryFrom<&Element>` and `TryFrom<Element>` (error:
//! [`common::ParseError`], which names the element, attribute and value at fault) and
//! `From<T> for Element`. Unknown attributes and children in foreign namespaces are ignored;
//! unknown children in the protocol's own namespace are errors.
//!
//! - [`sensordata`]: XEP-0323 `req`, `accepted`, `started`, `fields`, `failure`, `done`,
//!   `cancel`, `cancelled`.
//! - [`control`]: XEP-0325 `set`, `setResponse`, `paramError`, `getForm`, and the control
//!   form builder.
//! - [`events`]: IoT Events `subscribe`, `unsubscribe` (events reuse `sensordata`).
//! - [`common`]: errors, field-type and QoS flags, tokens, node references.
//! - [`xsd`]: xs:dateTime, xs:date, xs:time, xs:duration and xs:double.

pub mod common;
pub mod control;
pub mod events;
pub mod sensordata;
pub mod xsd;
