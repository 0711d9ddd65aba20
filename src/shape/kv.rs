//! The `kv` format: one record as one line of `key=value` pairs joined by `;`, in the
//! style of Kamailio's acc log lines. Pure byte work on an already parsed record.
//!
//! Grammar (also in docs/schema/README.md):
//! ```text
//! line  = pair *( ";" pair )          ; no trailing ";", no line terminator
//! pair  = text "=" text
//! text  = *( plain / escape )
//! plain = any character but ";", "=", "\" and control characters
//! escape = "\;" / "\=" / "\\" / "\n" / "\r" / "\t" / "\x" 2HEXDIG
//! ```
//! `\xHH` stands for the control character U+00HH (Unicode category Cc: U+0000–U+001F,
//! U+007F–U+009F) other than newline, carriage return and tab; HH is lower-case hex.
//! Values are the JSON value's text: a string unquoted and unescaped, a number's digits
//! exactly as in the record, `true`/`false`, nothing for `null`, and an object or array
//! (CEL's `extra`) as its compact JSON text — each then escaped as above.

use serde_json::value::RawValue;

use super::{Entry, ShapeError};

/// Appends the kv line of `entries` to `out`.
pub(super) fn write(entries: &[Entry<'_>], out: &mut Vec<u8>) -> Result<(), ShapeError> {
    for (index, entry) in entries.iter().enumerate() {
        if index > 0 {
            out.push(b';');
        }
        escape(&entry.name, out);
        out.push(b'=');
        write_value(entry.value, out)?;
    }
    Ok(())
}

fn write_value(value: &RawValue, out: &mut Vec<u8>) -> Result<(), ShapeError> {
    let raw = value.get();
    match raw.as_bytes().first() {
        Some(b'"') => {
            let text: super::Key<'_> = serde_json::from_str(raw)
                .map_err(|error| ShapeError::NotJson(error.to_string()))?;
            escape(&text.0, out);
        }
        Some(b'n') => {}
        _ => escape(raw, out),
    }
    Ok(())
}

/// Appends `text` with the kv escapes applied.
fn escape(text: &str, out: &mut Vec<u8>) {
    // Most names and values need no escape: copy them whole.
    if !text.chars().any(needs_escape) {
        out.extend_from_slice(text.as_bytes());
        return;
    }
    for character in text.chars() {
        match character {
            ';' => out.extend_from_slice(b"\\;"),
            '=' => out.extend_from_slice(b"\\="),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            control if control.is_control() => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                // Category Cc ends at U+009F: the code point fits two hex digits.
                let code = control as u32;
                out.extend_from_slice(b"\\x");
                out.push(HEX[(code >> 4) as usize & 0xf]);
                out.push(HEX[code as usize & 0xf]);
            }
            other => {
                let mut buffer = [0; 4];
                out.extend_from_slice(other.encode_utf8(&mut buffer).as_bytes());
            }
        }
    }
}

fn needs_escape(character: char) -> bool {
    matches!(character, ';' | '=' | '\\') || character.is_control()
}

#[cfg(test)]
mod tests {
    use super::escape;

    fn escaped(text: &str) -> String {
        let mut out = Vec::new();
        escape(text, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn separators_and_backslash_are_escaped() {
        assert_eq!(escaped("a;b=c\\d"), "a\\;b\\=c\\\\d");
    }

    #[test]
    fn newline_return_and_tab_have_named_escapes() {
        assert_eq!(escaped("one\ntwo\rthree\tfour"), "one\\ntwo\\rthree\\tfour");
    }

    #[test]
    fn other_control_characters_are_written_as_hex() {
        assert_eq!(
            escaped("\u{0}\u{1}\u{1b}\u{7f}\u{85}\u{9f}"),
            "\\x00\\x01\\x1b\\x7f\\x85\\x9f"
        );
    }

    #[test]
    fn plain_text_and_non_ascii_pass_unchanged() {
        for text in [
            "",
            "PJSIP/100-00000001",
            "\"Alice\" <100>",
            "Jos\u{fffd} M\u{fc}ller",
            "\u{2028}",
        ] {
            assert_eq!(escaped(text), text);
        }
    }
}
