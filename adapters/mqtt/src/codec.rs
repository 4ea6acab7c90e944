//! Payload codecs: a message's bytes to field values, and a command's value to bytes.
