//! The request and response the adapter works with: plain data, independent of the codec.

use std::time::Duration;

/// A request method (RFC 7252 §5.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Method {
    /// GET (0.01): read a resource; the only method Observe registers with.
    #[default]
    Get,
    /// POST (0.02).
    Post,
    /// PUT (0.03).
    Put,
    /// DELETE (0.04).
    Delete,
}

impl Method {
    /// The method code's detail (class is 0).
    pub fn code(self) -> u8 {
        match self {
            Method::Get => 1,
            Method::Post => 2,
            Method::Put => 3,
            Method::Delete => 4,
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        })
    }
}

/// A request, as the adapter builds it. Token, message id, Block1/Block2, Observe and
/// Size1 are the transport's business and are not part of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// Uri-Path segments, not percent-encoded: `["sensors", "temp"]` for `/sensors/temp`.
    pub path: Vec<String>,
    /// Uri-Query items, each `key=value` or `key`.
    pub query: Vec<String>,
    /// Content-Format of `payload` (RFC 7252 §12.3 numbers: 0 text/plain, 50 JSON, 60 CBOR …).
    pub content_format: Option<u16>,
    /// Accept: the Content-Format wanted in the response.
    pub accept: Option<u16>,
    /// The request body. Sent block-wise (Block1) when larger than the configured block size.
    pub payload: Vec<u8>,
    /// Confirmable (CON, retransmitted until acknowledged) or non-confirmable (NON, sent once).
    pub confirmable: bool,
}

impl Default for Request {
    fn default() -> Self {
        Request {
            method: Method::Get,
            path: Vec::new(),
            query: Vec::new(),
            content_format: None,
            accept: None,
            payload: Vec::new(),
            confirmable: true,
        }
    }
}

impl Request {
    /// A confirmable request for `path` (`"/a/b"` or `"a/b"`; empty segments are dropped).
    pub fn new(method: Method, path: &str) -> Self {
        Request {
            method,
            path: path
                .split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            ..Request::default()
        }
    }

    /// A confirmable GET for `path`.
    pub fn get(path: &str) -> Self {
        Request::new(Method::Get, path)
    }

    /// `/a/b?x=1`, for log lines and error texts.
    pub fn uri_path(&self) -> String {
        let mut s = String::new();
        for seg in &self.path {
            s.push('/');
            s.push_str(seg);
        }
        if s.is_empty() {
            s.push('/');
        }
        for (i, q) in self.query.iter().enumerate() {
            s.push(if i == 0 { '?' } else { '&' });
            s.push_str(q);
        }
        s
    }
}

/// A response, after block-wise reassembly.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Response {
    /// Code as (class, detail): `(2, 5)` is 2.05 Content, `(4, 4)` 4.04 Not Found.
    pub code: (u8, u8),
    /// Content-Format of `payload`, when the server said.
    pub content_format: Option<u16>,
    /// Max-Age as sent; `None` when absent, which RFC 7252 §5.10.5 reads as 60 s
    /// (see [`Response::max_age_or_default`]).
    pub max_age: Option<Duration>,
    /// ETag, when the server sent one (the last block's, for a block-wise body).
    pub etag: Option<Vec<u8>>,
    /// Location-Path segments (a 2.01 Created answer to POST).
    pub location_path: Vec<String>,
    /// The body, complete (every Block2 block fetched and joined).
    pub payload: Vec<u8>,
    /// The Observe option's value (24-bit sequence number) on a notification or on the
    /// answer to a registration; `None` otherwise.
    pub observe: Option<u32>,
}

impl Response {
    /// Max-Age, or the default of 60 s when the option was absent.
    pub fn max_age_or_default(&self) -> Duration {
        self.max_age.unwrap_or(super::params::DEFAULT_MAX_AGE)
    }

    /// Class 2 (Success).
    pub fn is_success(&self) -> bool {
        self.code.0 == 2
    }

    /// The code as written in the RFCs: `"2.05"`.
    pub fn code_string(&self) -> String {
        format!("{}.{:02}", self.code.0, self.code.1)
    }
}
