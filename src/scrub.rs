//! Takes secret values out of text credbridge did not write (a hypervisor's error answer, its
//! Debug output) before that text is logged or sent as `STATUS=`.
//!
//! A value can appear as written, in base64, or decoded from the base64 of a binary
//! credential, and each of those escaped once or more: JSON (`\"`, `\\`, `\/`, `\n`,
//! `\u00e9`, surrogate pairs), Rust Debug (`\'`, `\0`, `\u{e9}`), byte-string Debug (`\xff`).
//! Rather than build every escaped form of every value (there are too many, and mixes), the
//! text is unescaped layer by layer, each layer remembering where each byte came from in the
//! original, and the plain forms are searched in every layer. A match removes the original
//! span it came from.
//!
//! Everything derived from a value or from the text (which may hold values) is zeroed when
//! dropped.

use base64::Engine;
use zeroize::Zeroizing;

use crate::oem::{Form, OemString, Origin};

/// Escaping is rarely nested more than twice (Debug of an error quoting a JSON body).
const MAX_LAYERS: usize = 4;
/// A bare value shorter than this is not searched on its own: it would cut ordinary words out
/// of the message. It is still found as part of its whole `NAME=VALUE` string.
pub const MIN_BARE_VALUE: usize = 4;

/// One form of a secret to look for, and what replaces it.
pub struct Needle {
    bytes: Zeroizing<Vec<u8>>,
    label: String,
}

impl Needle {
    pub fn new(bytes: Zeroizing<Vec<u8>>, label: String) -> Needle {
        Needle { bytes, label }
    }
}

/// The forms of one confidential OEM string: the whole string, its value, and the value's
/// other encoding (base64 of a plain value; the decoded bytes of a binary one).
pub fn needles_of(o: &OemString) -> Vec<Needle> {
    let whole = o.expose();
    let mut out = vec![Needle::new(Zeroizing::new(whole.to_vec()), o.redacted())];
    let Some(eq) = whole.iter().position(|&b| b == b'=') else {
        return out;
    };
    let value = &whole[eq + 1..];
    let bare = |bytes: Zeroizing<Vec<u8>>| Needle::new(bytes, "<redacted>".into());
    if value.len() >= MIN_BARE_VALUE {
        out.push(bare(Zeroizing::new(value.to_vec())));
    }
    if value.len() >= MIN_BARE_VALUE {
        let len = base64::encoded_len(value.len(), false).unwrap_or(0);
        let mut enc = Zeroizing::new(vec![0u8; len]);
        let nopad = base64::engine::general_purpose::STANDARD_NO_PAD;
        if nopad.encode_slice(value, &mut enc[..]).is_ok() {
            // Unpadded, it is a prefix of the padded form too.
            out.push(bare(enc));
        }
    }
    if let Origin::Credential {
        form: Form::Binary, ..
    } = &o.origin
    {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut raw = Zeroizing::new(vec![0u8; value.len()]);
        if let Ok(n) = b64.decode_slice(value, &mut raw[..]) {
            raw.truncate(n);
            if n >= MIN_BARE_VALUE {
                // Text that shows bytes as UTF-8 shows invalid ones as U+FFFD.
                if std::str::from_utf8(&raw).is_err() {
                    let lossy = String::from_utf8_lossy(&raw).into_owned().into_bytes();
                    out.push(bare(Zeroizing::new(lossy)));
                }
                out.push(bare(raw));
            }
        }
    }
    out
}

/// A version of the text and, for each of its bytes, the span of the original it came from.
struct Layer {
    text: Zeroizing<Vec<u8>>,
    start: Vec<usize>,
    end: Vec<usize>,
}

/// Replaces every occurrence of every needle, in any escaping, by its label.
pub fn scrub(text: &str, needles: &[Needle]) -> String {
    if needles.is_empty() {
        return text.to_owned();
    }
    let n = text.len();
    let mut layer = Layer {
        text: Zeroizing::new(text.as_bytes().to_vec()),
        start: (0..n).collect(),
        end: (1..=n).collect(),
    };
    let mut spans: Vec<(usize, usize, &str)> = Vec::new();
    for _ in 0..MAX_LAYERS {
        for needle in needles {
            for at in find_all(&layer.text, &needle.bytes) {
                let last = at + needle.bytes.len() - 1;
                spans.push((layer.start[at], layer.end[last], &needle.label));
            }
        }
        match unescape(&layer) {
            Some(next) => layer = next,
            None => break,
        }
    }
    if spans.is_empty() {
        return text.to_owned();
    }
    // Longest first among equal starts, so a whole string's label wins over its value's.
    spans.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    let src = text.as_bytes();
    let mut out = Vec::with_capacity(n);
    let mut pos = 0;
    let mut i = 0;
    while i < spans.len() {
        let (s, mut e, label) = spans[i];
        i += 1;
        while i < spans.len() && spans[i].0 < e {
            e = e.max(spans[i].1);
            i += 1;
        }
        let s = s.max(pos);
        out.extend_from_slice(&src[pos..s]);
        out.extend_from_slice(label.as_bytes());
        pos = pos.max(e);
    }
    out.extend_from_slice(&src[pos..]);
    // A span may start inside a multi-byte character of the original.
    String::from_utf8_lossy(&out).into_owned()
}

fn find_all(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    let mut found = Vec::new();
    if needle.is_empty() || needle.len() > hay.len() {
        return found;
    }
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        if hay[i] == first && &hay[i..i + needle.len()] == needle {
            found.push(i);
            i += needle.len();
        } else {
            i += 1;
        }
    }
    found
}

fn hex(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u32::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

/// One escape at `b[i] == b'\\'`: the bytes it stands for and how many it spans.
fn escape_at(b: &[u8], i: usize, out: &mut Zeroizing<Vec<u8>>) -> Option<usize> {
    let c = *b.get(i + 1)?;
    let mut push_char = |ch: char| {
        let mut buf = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
    };
    let simple = match c {
        b'\\' | b'"' | b'\'' | b'/' => Some(c),
        b'n' => Some(b'\n'),
        b'r' => Some(b'\r'),
        b't' => Some(b'\t'),
        b'0' => Some(0),
        b'b' => Some(8),
        b'f' => Some(12),
        _ => None,
    };
    if let Some(s) = simple {
        out.push(s);
        return Some(2);
    }
    match c {
        b'x' => {
            let v = hex(b.get(i + 2..i + 4)?)?;
            out.push(v as u8);
            Some(4)
        }
        b'u' if b.get(i + 2) == Some(&b'{') => {
            let close = b[i + 3..].iter().take(7).position(|&x| x == b'}')?;
            let v = hex(&b[i + 3..i + 3 + close])?;
            push_char(char::from_u32(v).unwrap_or('\u{fffd}'));
            Some(close + 4)
        }
        b'u' => {
            let hi = hex(b.get(i + 2..i + 6)?)?;
            if (0xd800..0xdc00).contains(&hi) && b.get(i + 6..i + 8) == Some(b"\\u") {
                if let Some(lo) = b.get(i + 8..i + 12).and_then(hex) {
                    if (0xdc00..0xe000).contains(&lo) {
                        let v = 0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00);
                        push_char(char::from_u32(v).unwrap_or('\u{fffd}'));
                        return Some(12);
                    }
                }
            }
            push_char(char::from_u32(hi).unwrap_or('\u{fffd}'));
            Some(6)
        }
        _ => None,
    }
}

/// The text with one level of escapes undone; `None` if there were none.
fn unescape(prev: &Layer) -> Option<Layer> {
    let b = &prev.text[..];
    if !b.contains(&b'\\') {
        return None;
    }
    let mut next = Layer {
        text: Zeroizing::new(Vec::with_capacity(b.len())),
        start: Vec::with_capacity(b.len()),
        end: Vec::with_capacity(b.len()),
    };
    let mut i = 0;
    let mut changed = false;
    while i < b.len() {
        let before = next.text.len();
        let used = if b[i] == b'\\' {
            escape_at(b, i, &mut next.text)
        } else {
            None
        };
        let used = match used {
            Some(u) => {
                changed = true;
                u
            }
            None => {
                next.text.push(b[i]);
                1
            }
        };
        let (s, e) = (prev.start[i], prev.end[i + used - 1]);
        for _ in before..next.text.len() {
            next.start.push(s);
            next.end.push(e);
        }
        i += used;
    }
    changed.then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needle(s: &str) -> Needle {
        Needle::new(Zeroizing::new(s.as_bytes().to_vec()), "<X>".into())
    }

    #[test]
    fn plain_json_and_debug_forms_are_all_found() {
        let secret = "p\"a/ss\\w\u{e9}\n\u{1f511}d";
        let n = [needle(secret)];
        let json = serde_json::to_string(secret).unwrap();
        let debug = format!("{secret:?}");
        let ascii = r#"p\"a\/ss\\w\u00E9\n\ud83d\udd11d"#;
        let debug_of_json = format!("{json:?}");
        for text in [
            secret.to_owned(),
            json.clone(),
            debug.clone(),
            ascii.to_owned(),
            debug_of_json,
            format!("before {json} middle {debug} after"),
        ] {
            let out = scrub(&text, &n);
            assert!(out.contains("<X>"), "{text:?} -> {out:?}");
            for leak in ["ss", "\u{e9}", "e9", "E9", "d83d", "\u{1f511}", "1f511"] {
                assert!(
                    !out.contains(leak),
                    "{text:?} -> {out:?} still has {leak:?}"
                );
            }
        }
        assert_eq!(
            scrub(&format!("before {json} after"), &n),
            "before \"<X>\" after"
        );
    }

    #[test]
    fn untouched_text_stays_as_it_is() {
        let n = [needle("secret-value")];
        let t = r#"Error creating VM: \"odd\" \u{zz} \x \"#;
        assert_eq!(scrub(t, &n), t);
        assert_eq!(scrub("", &n), "");
    }

    #[test]
    fn overlapping_forms_collapse_into_one_label() {
        let n = [
            Needle::new(
                Zeroizing::new(b"io.systemd.credential:k=hunter22".to_vec()),
                "WHOLE".into(),
            ),
            needle("hunter22"),
        ];
        assert_eq!(
            scrub("[\"io.systemd.credential:k=hunter22\"] hunter22", &n),
            "[\"WHOLE\"] <X>"
        );
    }

    #[test]
    fn every_form_of_a_credential_is_a_needle() {
        use crate::credentials::{Credential, Secret, SecretBytes};
        use base64::Engine;
        let cred = |value: &[u8]| Credential {
            name: "k".into(),
            guest_name: "k".into(),
            value: Secret::new(SecretBytes::from_slice(value)),
        };
        let b64 = base64::engine::general_purpose::STANDARD;
        let raw = b"\x00bin\xffary";
        let bin = OemString::from_credential(&cred(raw), true);
        let needles = needles_of(&bin);
        let text = format!(
            "{} | {} | {:?} | {}",
            b64.encode(raw),
            String::from_utf8_lossy(raw),
            String::from_utf8_lossy(raw),
            b64.encode(b64.encode(raw)),
        );
        let out = scrub(&text, &needles);
        assert_eq!(
            out, "<redacted> | <redacted> | \"<redacted>\" | <redacted>",
            "{text:?}"
        );
        let plain = OemString::from_credential(&cred(b"plain-value"), true);
        let out = scrub(
            &format!(
                "{} {}",
                b64.encode("plain-value"),
                String::from_utf8_lossy(plain.expose())
            ),
            &needles_of(&plain),
        );
        assert_eq!(
            out,
            "<redacted>= io.systemd.credential:k=<redacted 11 bytes>"
        );
        // Short values are found only within the whole string.
        let short = OemString::from_credential(&cred(b"abc"), true);
        assert_eq!(scrub("abc", &needles_of(&short)), "abc");
    }

    #[test]
    fn byte_string_debug_is_found() {
        let n = [Needle::new(
            Zeroizing::new(vec![0xff, 0x00, b'a', b'b', 0x7f]),
            "<X>".into(),
        )];
        let text = format!("{:?}", bytes::Bytes::from_static(b"\xff\x00ab\x7f"));
        assert_eq!(scrub(&text, &n), "b\"<X>\"");
    }
}
