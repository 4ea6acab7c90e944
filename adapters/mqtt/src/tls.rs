//! The TLS client configuration of a broker session: the broker's certificate checked
//! against a configured CA file or the system's roots, its name checked (the host, or a
//! configured `server_name`), an optional client certificate. Shared with the rest of
//! the gateway (`fieldgate-tls`); rumqttc passes the host as the name, which the shared
//! configuration replaces by `server_name` when one is set.

pub use fieldgate_tls::client_config;
