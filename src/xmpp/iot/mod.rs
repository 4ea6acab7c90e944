//! Typed payloads of the XMPP IoT protocols: XEP-0323 sensor data, XEP-0325 control and
//! the IoT events ProtoXEP, each parsed from and written to `minidom::Element`.
