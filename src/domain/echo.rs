//! The one way a caller's value is echoed back in an error: escaped, and cut short.
//!
//! Every message, field path and description that quotes what a caller sent (a model name, an
//! id, a label key, a page token, a size string ...) goes through [`echo`]; whole messages that
//! may have collected many such values go through [`shorten`] at the transport edge. An 11 MiB
//! model name then comes back as a few hundred characters and its length, so the error fits in
//! the trailers any client accepts (gRPC clients commonly refuse header blocks over 8-16 KiB)
//! and in an AMQP header frame.

use std::fmt;

/// How many characters of a caller's value an error echoes: enough to recognise the value
/// (ids, model names and sizes are far shorter), few enough that a status stays a few KiB.
pub const ECHO_CHARS: usize = 200;

/// A caller's value as an error shows it: at most [`ECHO_CHARS`] characters (or
/// [`Echo::within`]) after escaping, then `... (N characters)` naming the original length.
/// `{}` writes it bare (or quoted after [`Echo::quoted`]), `{:?}` in double quotes.
#[derive(Clone, Copy)]
pub struct Echo<'a> {
    value: &'a str,
    max_chars: usize,
    quoted: bool,
}

/// Wraps a caller's value for a message or a field path; see [`Echo`].
pub fn echo(value: &str) -> Echo<'_> {
    Echo {
        value,
        max_chars: ECHO_CHARS,
        quoted: false,
    }
}

impl Echo<'_> {
    /// The same value cut after `max_chars` characters instead (e.g. a key inside a field path).
    pub fn within(self, max_chars: usize) -> Self {
        Echo { max_chars, ..self }
    }

    /// The same value in double quotes under `{}` too (as `{:?}` always writes it).
    pub fn quoted(self) -> Self {
        Echo {
            quoted: true,
            ..self
        }
    }

    /// Writes the escaped head (control characters, quotes and backslashes escaped, so a value
    /// cannot forge lines or quoting) and, when cut, the original length.
    fn write(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut written = 0;
        for (taken, (offset, c)) in self.value.char_indices().enumerate() {
            let escaped = c.escape_debug();
            if written + escaped.len() > self.max_chars {
                // Counting is linear in the value: fine for anything a request could hold.
                let total = taken + self.value[offset..].chars().count();
                return write!(f, "... ({total} characters)");
            }
            written += escaped.len();
            fmt::Display::fmt(&escaped, f)?;
        }
        Ok(())
    }
}

impl fmt::Display for Echo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.quoted {
            fmt::Debug::fmt(self, f)
        } else {
            self.write(f)
        }
    }
}

impl fmt::Debug for Echo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        self.write(f)?;
        f.write_str("\"")
    }
}

/// A whole message (already written, possibly quoting several echoed values) cut to at most
/// `max_bytes` bytes on a character boundary, with the same `... (N characters)` tail; not
/// escaped again. Bytes, not characters: a transport's limits are in bytes.
pub fn shorten(text: &str, max_bytes: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max_bytes {
        return text.into();
    }
    let mut cut = max_bytes;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let total = text.chars().count();
    format!("{}... ({total} characters)", &text[..cut]).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_echoed_whole_and_escaped() {
        assert_eq!(echo("vid_123").to_string(), "vid_123");
        assert_eq!(format!("{:?}", echo("a\"b\n")), r#""a\"b\n""#);
    }

    #[test]
    fn long_values_are_cut_and_name_their_length() {
        let long = "x".repeat(11 * 1024 * 1024);
        let shown = echo(&long).to_string();
        assert!(shown.len() < ECHO_CHARS + 40, "{} bytes", shown.len());
        assert!(shown.ends_with("... (11534336 characters)"), "{shown}");
        assert_eq!(&shown[..ECHO_CHARS], &long[..ECHO_CHARS]);
    }

    #[test]
    fn escaping_counts_against_the_bound() {
        // Each NUL escapes to `\0`: the bound is on what is written, not on what was sent.
        let nuls = "\0".repeat(1000);
        let shown = echo(&nuls).within(10).to_string();
        assert_eq!(shown, r"\0\0\0\0\0... (1000 characters)");
    }

    #[test]
    fn multibyte_values_are_cut_on_character_boundaries() {
        let cats = "猫".repeat(500);
        let shown = echo(&cats).to_string();
        assert!(shown.starts_with(&"猫".repeat(ECHO_CHARS)));
        assert!(shown.ends_with("... (500 characters)"), "{shown}");
    }

    #[test]
    fn shorten_cuts_messages_once() {
        assert_eq!(shorten("short", 10), "short");
        assert_eq!(shorten("abcdefghijkl", 4), "abcd... (12 characters)");
        assert_eq!(shorten("猫猫", 4), "猫... (2 characters)");
    }
}
