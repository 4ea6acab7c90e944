//! Payload codecs of fieldgate's adapters (MQTT, CoAP): a message's bytes to field
//! values, and a command's value to bytes.
//!
//! Every topic (or resource) has one payload [`Format`], shared by all the fields it feeds:
//!
//! - **plain**: the payload is the value, as text. It must be UTF-8; surrounding ASCII
//!   whitespace (spaces, tabs, line ends) is trimmed.
//! - **JSON**: each field names its value by an RFC 6901 JSON pointer (`/temperature`,
//!   `/state/battery`, `/sensors/0`; `~1` stands for `/` and `~0` for `~` in a key; the
//!   empty pointer is the whole document). The message is parsed once, whatever the
//!   number of fields. A topic may also name where the message carries its time (see
//!   below).
//! - **SenML**: the payload is a SenML JSON pack (RFC 8428), and a field names its record:
//!   the record whose full name (base name `bn` followed by name `n`) is the field's
//!   record name, or whose own `n` is. Base fields (`bn`, `bt`, `bv`, `bver`, ...) apply
//!   to their record and to all later ones until changed. The value is `v` plus the base
//!   value `bv`, or `vs` (text), `vb` (boolean), or `vd` (data, taken as its base64
//!   text). The time is `bt` plus `t`; a time below 2^28 (268,435,456) counts from the
//!   message's arrival (`-60` is a minute before it, a record without a time is "now"),
//!   and a larger one is Unix seconds. When a pack holds several records of one field (a
//!   time series), the field takes the latest one; of records with the same time, the
//!   last in the pack. Units (`u`, `bu`), sums (`s`, `bs`) and update times (`ut`) are
//!   not used. A pack of a later SenML version than 10 (`bver`), or holding a field
//!   whose name ends in `_` (an extension a receiver must understand), a record with
//!   more than one value, a field of the wrong JSON type (`"v":"21"`) or a time beyond
//!   any range, is refused as a whole.
//! - **CBOR**: the payload is one CBOR item (RFC 8949), and each field names its value by
//!   a path written as a JSON pointer (see [`Pointer`]): a token names the map member
//!   whose text key it is or, when the token is an integer in canonical decimal form
//!   (`0`, `7`, `-2`), whose integer key has that value; in an array it is an index. Of
//!   several members that match (a duplicate key, or the text key `"1"` beside the
//!   integer key `1`), the last in the map. Keys of other types are not named. A topic may
//!   name where the message carries its time, as in JSON.
//! - **SenML CBOR**: the payload is a SenML CBOR pack (RFC 8428 §6), with the integer
//!   labels of its Table 4 (`bver` −1, `bn` −2, `bt` −3, `bu` −4, `bv` −5, `bs` −6, `n` 0,
//!   `u` 1, `v` 2, `vs` 3, `vb` 4, `s` 5, `t` 6, `ut` 7, `vd` 8). A text label is an
//!   extension's, refused when it ends in `_`, skipped otherwise; an unknown integer label
//!   is skipped. `vd` is a byte string, taken as the base64url text (no padding) SenML
//!   JSON would carry. Records are resolved exactly as SenML JSON's, and a pack breaking
//!   the same rules is refused as a whole.
//!
//! An empty payload yields no value in any format: it is how MQTT clears a retained
//! message. In plain, JSON and SenML so does a payload of whitespace only; in CBOR, where
//! a space is the integer −1, only an empty one.
//!
//! # CBOR items
//!
//! Integers of either sign up to 64 bits (−2^64 to 2^64 − 1), and floats of every width
//! (half, single and double precision) are numbers; a half or single precision float is
//! read exactly as the value it holds (a single-precision 21.1 is 21.100000381469727: give
//! such a field decimals). Text strings must be UTF-8. `null` and `undefined` count as
//! absent, as JSON's `null`. Byte strings and simple values are refused by every field
//! (no field type is binary). Tags: 0 (an RFC 3339 date/time as text) and 1 (Unix
//! seconds) are times, which a timestamp field reads as such and other fields read as
//! their item (the text, the number); 2 and 3 (bignums) and 4 (decimal fractions, which
//! SenML CBOR may use for numbers) are numbers; any other tag (55799, self-described
//! CBOR; 32, a URI) is read as its item. Maps and arrays may have definite or indefinite
//! lengths, and so may strings.
//!
//! A payload that is not one well-formed item is refused as a whole: truncated, with a
//! length beyond the payload (a header claiming a 4 GB string is refused, not
//! allocated), with bytes after its item, with invalid UTF-8 in a text string, with a
//! reserved initial byte, or nesting arrays, maps and tags deeper than 128 levels.
//!
//! # What a field accepts
//!
//! A field absent from a message keeps its last value; so does a field whose value is
//! `null` (Zigbee2MQTT reports values it does not know as `null`). A value that is there
//! but cannot be read as the field's type is reported for that field alone; the other
//! fields of the message are still taken. "Text" below means a JSON or CBOR string or, in
//! a plain payload, the payload; numbers in text are decimal (`21`, `-3.5`, `2.1e1`) with
//! surrounding whitespace ignored.
//!
//! | Field type  | Accepts |
//! |-------------|---------|
//! | `bool`      | `true`/`false`; the numbers 0 and 1; the text `true`/`false`, `on`/`off`, `yes`/`no`, `1`/`0` in any letter case (`ON`, `Off`) |
//! | `int`       | a whole number from −2,147,483,648 to 2,147,483,647, as a number or text (`21`, `21.0`, `"21"`, `2.1e1`) |
//! | `long`      | a whole number from −2^63 to 2^63−1, likewise |
//! | `double`    | any finite number, as a number or text; `NaN` and infinities are refused |
//! | `string`    | text as it is (a JSON or CBOR string is not trimmed); a number or boolean as its shortest JSON text (`21.50` gives `21.5`, `true`) |
//! | `enum`      | what `string` accepts, if it is exactly (letter case included) one of the field's labels |
//! | `timestamp` | an RFC 3339 time with `Z` or an offset (`2024-05-01T14:00:00+02:00`), or Unix seconds as a number or text (fractions allowed); in CBOR also tag 0 (RFC 3339 text only) and tag 1 (Unix seconds) |
//!
//! A whole-number field refuses a fraction (`21.5`) and a number beyond its range rather
//! than round or clip it. A whole number written as a fraction or with an exponent
//! (`21.0`, `2.1e1`, a CBOR float) is accepted up to ±2^53 (9,007,199,254,740,992);
//! beyond, such a number is not exact and is refused as out of range: a large `long` is
//! written in digits (or as a CBOR integer). Times must fall within the years 1970 to
//! 9999.
//!
//! # Message time
//!
//! A value is stamped with its time in the message (a SenML record's time, or a JSON or
//! CBOR topic's timestamp), else with the message's arrival. A topic's timestamp is found
//! by a pointer and is an RFC 3339 time, or a number (or numeric text) of Unix seconds or
//! milliseconds as configured; in CBOR also tag 0 (RFC 3339 text) or tag 1 (Unix seconds,
//! whatever the unit configured). A message without it is stamped with its arrival; one
//! whose timestamp is there but unreadable is refused as a whole.
//!
//! # Commands
//!
//! A command is encoded by a [`Template`]: plain (the value as text: a double with the
//! field's decimals, a bool as `true`/`false`), a JSON object holding the value at a
//! pointer, with an object made for every step of the pointer (`/a/b` gives
//! `{"a":{"b":21.5}}`; array indices are not made, `0` is a key like any other), or a CBOR
//! map holding the value at a path, with a map made for every step (`/a/1` gives
//! `{"a": {1: 21.5}}`: a token that is an integer is an integer key; array indices are
//! not made). In JSON, numbers and booleans are JSON numbers and booleans (a double
//! rounded to the field's decimals), text and labels JSON strings, times RFC 3339 strings
//! to the second. In CBOR (preferred serialization, RFC 8949 §4.2.2), whole numbers are
//! integers, doubles (rounded likewise) the shortest float that holds them exactly (21.5
//! is a half-precision float), booleans `true`/`false`, text and labels text strings,
//! times tag 1 with whole Unix seconds. Where a device wants its own words for on and off
//! (`ON`/`OFF`), they replace `true` and `false`, as text in every form. [`same_value`]
//! decides whether the device's echo of a command confirms it.
//!
//! # Availability
//!
//! [`Availability`] reads a device's online/offline messages: the payload, trimmed,
//! compared exactly with the configured words, or, with a pointer, the JSON value there
//! (a string, or a boolean or number as its JSON text). With a pointer, a payload that
//! is not JSON is compared as plain text, so that Zigbee2MQTT's two availability forms,
//! `online` and `{"state":"online"}`, are both understood.
//!
//! # CoAP Content-Formats
//!
//! [`format_for_content_format`] and [`content_format_for`] map the formats to their CoAP
//! Content-Format numbers (RFC 7252 §12.3): 0 plain (`text/plain; charset=utf-8`), 50
//! JSON, 60 CBOR, 110 SenML JSON, 112 SenML CBOR (111 and 113, SensML, are read as
//! SenML); [`Template::content_format`] labels a command.
//!
//! Nothing here panics, whatever the payload; an error quotes at most 64 bytes of it.

#![warn(missing_docs)]

mod availability;
mod cbor;
pub mod content_format;
mod convert;
mod decode;
mod encode;
mod error;
pub mod fuzzing;
mod pointer;
mod senml;
#[cfg(test)]
mod testing;
mod time;
mod tree;

pub use availability::Availability;
pub use content_format::{content_format_for, format_for_content_format};
pub use decode::{
    default_pointer, Decoded, FieldDecoder, Format, Locator, SetupError, TimestampSpec,
    TopicDecoder,
};
pub use encode::{encode, same_value, EncodeError, Template};
pub use error::DecodeError;
pub use pointer::{Pointer, PointerError};
pub use time::TimeUnit;
