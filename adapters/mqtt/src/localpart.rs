//! The rule that turns a topic segment into a device id (a JID localpart).
//!
//! A topic filter such as `zigbee2mqtt/+` makes one device of every value the `+` takes
//! (a Zigbee2MQTT friendly name, a serial number). That segment becomes the device's id,
//! the localpart of its JID, by this rule:
//!
//! - ASCII letters are lowercased (`Kitchen` → `kitchen`);
//! - ASCII digits, `-`, `_` and `.` are kept;
//! - a space becomes `_` (`Living Room` → `living_room`);
//! - any other character (anything outside ASCII, `@`, `/`, `:`, `"`, `&`, `'`, `<`, `>`,
//!   `+`, `#`, a control character, a tab, ...) makes the segment unmappable;
//! - an empty segment, one that begins or ends with `.`, or one holding `..` is
//!   unmappable;
//! - the configured prefix is put in front as written, and the whole id must be at most
//!   64 bytes long.
//!
//! An unmappable segment is not guessed at: its device is not created, and the reason
//! names the offending character. The rule keeps ids readable, stable across restarts and
//! free of anything a JID would have to escape or normalise.
//!
//! Two segments may map to the same id: `Living Room`, `living room` and `living_room`
//! all become `living_room`. This module does not know the other segments; its caller
//! detects such collisions.

use std::fmt;

/// The longest device id, prefix included, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Why a topic segment cannot become a device id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unmappable {
    /// The segment is empty.
    #[error("the topic segment is empty")]
    Empty,
    /// The segment holds a character the rule does not map.
    #[error("{} at position {position} is not allowed in a device id", CharName(*.character))]
    Character {
        /// The character.
        character: char,
        /// Its position in the segment, counted in characters from 0.
        position: usize,
    },
    /// The segment begins or ends with `.`, or holds `..`.
    #[error("a device id may not begin or end with '.' nor hold \"..\"")]
    Dots,
    /// The id, prefix included, would be longer than [`MAX_ID_LEN`] bytes (the segment's
    /// length in bytes is counted, checked before its characters).
    #[error("the device id would be {len} bytes long, more than the {MAX_ID_LEN} allowed")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
}

/// A character named so that a log line shows it whatever it is (a control character, a
/// combining mark, a right-to-left override).
struct CharName(char);

impl fmt::Display for CharName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        if c.is_ascii_graphic() {
            write!(f, "character '{c}' (U+{:04X})", u32::from(c))
        } else {
            write!(f, "character U+{:04X}", u32::from(c))
        }
    }
}

/// Maps a topic segment to a device id: `prefix` followed by the mapped segment, by the
/// rule in the [module documentation](self).
///
/// `prefix` is used as given; the configuration has checked it against the same rule.
pub fn map_segment(segment: &str, prefix: &str) -> Result<String, Unmappable> {
    if segment.is_empty() {
        return Err(Unmappable::Empty);
    }
    // Every mapped character is one ASCII byte, so the segment's byte length is the
    // mapped length whenever the mapping succeeds: checking it first refuses a hostile
    // megabyte-long segment without reading it.
    let len = prefix.len() + segment.len();
    if len > MAX_ID_LEN {
        return Err(Unmappable::TooLong { len });
    }
    if let Some((position, character)) = segment
        .chars()
        .enumerate()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ' ')))
    {
        return Err(Unmappable::Character {
            character,
            position,
        });
    }
    if segment.starts_with('.') || segment.ends_with('.') || segment.contains("..") {
        return Err(Unmappable::Dots);
    }
    let mut id = String::with_capacity(len);
    id.push_str(prefix);
    id.extend(segment.chars().map(|c| match c {
        ' ' => '_',
        c => c.to_ascii_lowercase(),
    }));
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(segment: &str) -> Result<String, Unmappable> {
        map_segment(segment, "")
    }

    #[test]
    fn zigbee2mqtt_names_map() {
        assert_eq!(map("0x00158d0001a2b3c4").unwrap(), "0x00158d0001a2b3c4");
        assert_eq!(map("Living Room Sensor").unwrap(), "living_room_sensor");
        assert_eq!(map("Kitchen_Plug-2").unwrap(), "kitchen_plug-2");
        assert_eq!(map("hue.bulb.1").unwrap(), "hue.bulb.1");
        assert_eq!(map("0x00158D0001A2B3C4").unwrap(), "0x00158d0001a2b3c4");
    }

    #[test]
    fn prefix_is_prepended_as_is() {
        assert_eq!(map_segment("Bulb 1", "zb-").unwrap(), "zb-bulb_1");
        assert_eq!(map_segment("x", "ha.").unwrap(), "ha.x");
    }

    #[test]
    fn different_segments_may_collide() {
        let a = map("Living Room").unwrap();
        assert_eq!(a, map("living_room").unwrap());
        assert_eq!(a, map("LIVING ROOM").unwrap());
    }

    #[test]
    fn forbidden_characters_are_named() {
        for (segment, character, position) in [
            ("a@b", '@', 1),
            ("a/b", '/', 1),
            ("a:b", ':', 1),
            ("\"a", '"', 0),
            ("a&b", '&', 1),
            ("it's", '\'', 2),
            ("<a>", '<', 0),
            ("a>", '>', 1),
            ("a+b", '+', 1),
            ("a#", '#', 1),
            ("tab\there", '\t', 3),
            ("nul\0", '\0', 3),
            ("del\u{7f}", '\u{7f}', 3),
            ("Küche", 'ü', 1),
            ("温度", '温', 0),
            ("caf\u{e9}", '\u{e9}', 3),
            ("e\u{301}", '\u{301}', 1),
            ("a\u{202e}b", '\u{202e}', 1),
            ("a\u{a0}b", '\u{a0}', 1),
            ("🌡", '🌡', 0),
        ] {
            assert_eq!(
                map(segment),
                Err(Unmappable::Character {
                    character,
                    position
                }),
                "{segment:?}"
            );
        }
    }

    #[test]
    fn error_texts_say_why() {
        assert_eq!(
            map("a@b").unwrap_err().to_string(),
            "character '@' (U+0040) at position 1 is not allowed in a device id"
        );
        assert_eq!(
            map("a\nb").unwrap_err().to_string(),
            "character U+000A at position 1 is not allowed in a device id"
        );
        assert_eq!(
            map("Küche").unwrap_err().to_string(),
            "character U+00FC at position 1 is not allowed in a device id"
        );
        assert_eq!(
            map("").unwrap_err().to_string(),
            "the topic segment is empty"
        );
        assert!(map(".a").unwrap_err().to_string().contains("'.'"));
        assert_eq!(
            map(&"a".repeat(65)).unwrap_err().to_string(),
            "the device id would be 65 bytes long, more than the 64 allowed"
        );
    }

    #[test]
    fn empty_and_dots_are_unmappable() {
        assert_eq!(map(""), Err(Unmappable::Empty));
        for segment in [".", "..", ".a", "a.", "a..b", "...", " ."] {
            assert_eq!(map(segment), Err(Unmappable::Dots), "{segment:?}");
        }
        assert_eq!(map("a.b.c").unwrap(), "a.b.c");
    }

    #[test]
    fn spaces_only_map_to_underscores() {
        // Surprising but by the rule: spaces are kept, as underscores, not trimmed.
        assert_eq!(map(" ").unwrap(), "_");
        assert_eq!(map(" a ").unwrap(), "_a_");
    }

    #[test]
    fn length_counts_the_prefix() {
        let max = "a".repeat(MAX_ID_LEN);
        assert_eq!(map(&max).unwrap(), max);
        assert_eq!(
            map(&"a".repeat(MAX_ID_LEN + 1)),
            Err(Unmappable::TooLong {
                len: MAX_ID_LEN + 1
            })
        );
        let rest = "b".repeat(MAX_ID_LEN - 3);
        assert_eq!(map_segment(&rest, "zb-").unwrap(), format!("zb-{rest}"));
        assert_eq!(
            map_segment(&format!("{rest}b"), "zb-"),
            Err(Unmappable::TooLong {
                len: MAX_ID_LEN + 1
            })
        );
    }

    #[test]
    fn hostile_long_segments_are_refused_by_length() {
        let huge = "é".repeat(1 << 20);
        assert_eq!(map(&huge), Err(Unmappable::TooLong { len: 2 << 20 }));
        let huge = "a".repeat(1 << 20);
        assert_eq!(map(&huge), Err(Unmappable::TooLong { len: 1 << 20 }));
    }

    #[test]
    fn mapped_ids_follow_the_rule() {
        // Whatever maps is lowercase ASCII letters, digits, '-', '_', '.', with no dot at
        // an end and no "..", within the length.
        for segment in [
            "A B",
            "0xABC",
            "x-Y_z.1",
            "Zone 12 . 3",
            "a b c d e f",
            "-",
            "_",
            "9",
        ] {
            let id = map(segment).unwrap();
            assert!(!id.is_empty() && id.len() <= MAX_ID_LEN);
            assert!(id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b)));
            assert!(!id.starts_with('.') && !id.ends_with('.') && !id.contains(".."));
        }
    }
}
