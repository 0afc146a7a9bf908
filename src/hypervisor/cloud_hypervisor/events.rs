//! cloud-hypervisor's event monitor stream: pretty-printed JSON objects separated by blank
//! lines, arriving in arbitrary chunks.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Event {
    pub source: String,
    pub event: String,
    #[serde(default)]
    pub properties: Option<BTreeMap<String, String>>,
}

impl Event {
    pub fn is(&self, source: &str, event: &str) -> bool {
        self.source == source && self.event == event
    }
}

/// Bytes we keep while waiting for an event's end. Real events are a few hundred bytes; past
/// this the stream is not an event stream and we resynchronise.
const MAX_PENDING: usize = 1 << 20;

#[derive(Default)]
pub struct EventParser {
    buf: Vec<u8>,
}

impl EventParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds a chunk; returns every complete event in it, and a note for each piece of the
    /// stream that was not an event (skipped up to the next blank line).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Result<Event, String>> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut consumed = 0;
        loop {
            let rest = &self.buf[consumed..];
            let skip_ws = rest
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(rest.len());
            if skip_ws == rest.len() {
                consumed = self.buf.len();
                break;
            }
            let mut stream =
                serde_json::Deserializer::from_slice(&rest[skip_ws..]).into_iter::<Event>();
            match stream.next() {
                Some(Ok(ev)) => {
                    consumed += skip_ws + stream.byte_offset();
                    out.push(Ok(ev));
                }
                // A value read up to the last byte we have may go on (`4` then `44e1`), so
                // an error there is decided only once more bytes come: otherwise how the
                // stream was cut would change which garbage gets skipped.
                Some(Err(e)) if e.is_eof() || at_end(&rest[skip_ws..], &e) => {
                    consumed += skip_ws;
                    break;
                }
                Some(Err(e)) => {
                    // Resynchronise at the next blank line, the separator between events.
                    let start = consumed + skip_ws;
                    match find(&self.buf[start..], b"\n\n") {
                        Some(i) => {
                            consumed = start + i + 2;
                            out.push(Err(format!("unparsable event skipped: {e}")));
                        }
                        None => {
                            consumed = start;
                            break;
                        }
                    }
                }
                None => {
                    consumed = self.buf.len();
                    break;
                }
            }
        }
        self.buf.drain(..consumed);
        if self.buf.len() > MAX_PENDING {
            self.buf.clear();
            out.push(Err("event stream garbage over 1 MiB discarded".into()));
        }
        out
    }
}

/// Whether serde_json's error is at the last byte of `text` (its position is the last byte
/// it read: 1-based line and column, column 0 being the line's newline).
fn at_end(text: &[u8], e: &serde_json::Error) -> bool {
    let mut line_start = 0;
    for _ in 1..e.line() {
        match text[line_start..].iter().position(|&b| b == b'\n') {
            Some(i) => line_start += i + 1,
            None => return true,
        }
    }
    (line_start + e.column()) >= text.len()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOTED: &str = "{\n  \"timestamp\": {\n    \"secs\": 0,\n    \"nanos\": 323310\n  },\n  \"source\": \"vm\",\n  \"event\": \"booted\",\n  \"properties\": null\n}\n\n";
    const ACTIVATED: &str = "{\n  \"timestamp\": {\n    \"secs\": 1,\n    \"nanos\": 5\n  },\n  \"source\": \"virtio-device\",\n  \"event\": \"activated\",\n  \"properties\": {\n    \"id\": \"_disk0\"\n  }\n}\n\n";

    #[test]
    fn parses_events_split_at_every_byte() {
        let stream = format!("{BOOTED}{ACTIVATED}");
        for cut in 0..stream.len() {
            let mut p = EventParser::new();
            let mut got = p.push(&stream.as_bytes()[..cut]);
            got.extend(p.push(&stream.as_bytes()[cut..]));
            let got: Vec<_> = got.into_iter().map(Result::unwrap).collect();
            assert_eq!(got.len(), 2, "cut at {cut}");
            assert!(got[0].is("vm", "booted"));
            assert_eq!(
                got[1].properties.as_ref().unwrap()["id"],
                "_disk0".to_string()
            );
        }
    }

    #[test]
    fn skips_garbage_and_recovers() {
        let mut p = EventParser::new();
        let got = p.push(format!("not json\n\n{BOOTED}").as_bytes());
        assert!(got[0].is_err());
        assert!(got[1].as_ref().unwrap().is("vm", "booted"));
    }

    /// Found by the events fuzz target: `[` with a blank line inside, then a number at the
    /// end of a chunk. Fed whole, `444e` is unfinished; fed byte by byte, `4` alone was a
    /// complete number of the wrong type, so the blank line inside the array was taken as
    /// the resynchronisation point and one more note came out.
    #[test]
    fn a_number_at_the_end_of_a_chunk_waits_for_the_next() {
        let stream = b"[\n \n\n444e";
        let whole = EventParser::new().push(stream);
        let mut p = EventParser::new();
        let mut bytewise = Vec::new();
        for b in stream {
            bytewise.extend(p.push(std::slice::from_ref(b)));
        }
        assert_eq!(bytewise, whole);
        assert!(whole.is_empty(), "{whole:?}");
        // Once the value is over, the garbage is skipped (blank line by blank line) and the
        // next event comes through.
        let got = p.push(format!("1]\n\n{BOOTED}").as_bytes());
        assert!(got[..got.len() - 1].iter().all(Result::is_err), "{got:?}");
        assert!(got.last().unwrap().as_ref().unwrap().is("vm", "booted"));
    }

    #[test]
    fn byte_by_byte_feed() {
        let mut p = EventParser::new();
        let mut n = 0;
        for b in BOOTED.as_bytes() {
            n += p.push(std::slice::from_ref(b)).len();
        }
        assert_eq!(n, 1);
    }
}
