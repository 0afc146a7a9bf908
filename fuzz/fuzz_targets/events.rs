//! cloud-hypervisor's event-monitor stream parser
//! (`credbridge::hypervisor::cloud_hypervisor::events::EventParser`).
//!
//! Input: byte 0 is the number of cut points (mod 16), then two bytes per cut point, then the
//! stream. The stream is fed whole, then in the pieces the cut points make, then (when at most 128 bytes)
//! byte by byte.
//!
//! Checked: no panic, and splitting never changes what comes out: the same events and as
//! many notes about skipped garbage, in the same order. The notes' text may differ: a bare
//! number cut at the end of a chunk is complete JSON, so garbage such as `[444` fed as `[4`
//! then `44` is reported as "integer `4`" (found by this target; harmless, since a valid event
//! is an object or array that cannot end early, and the skip goes to the same blank line).
//! It also found a case where the count differed: a number at the end of a chunk inside an
//! array with a blank line in it (seeds/events/number-at-chunk-end-inside-array); the parser
//! now waits for more bytes when serde_json's error is at the last byte it has.
#![no_main]

use credbridge::hypervisor::cloud_hypervisor::events::{Event, EventParser};
use libfuzzer_sys::fuzz_target;

/// Every event, and `Err(())` for each note about skipped garbage.
fn feed<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Vec<Result<Event, ()>> {
    let mut p = EventParser::new();
    let mut out = Vec::new();
    for piece in pieces {
        out.extend(p.push(piece).into_iter().map(|r| r.map_err(|_| ())));
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = (n % 16) as usize;
    if rest.len() < 2 * n {
        return;
    }
    let (cut_bytes, stream) = rest.split_at(2 * n);
    let mut cuts: Vec<usize> = cut_bytes
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]) as usize % (stream.len() + 1))
        .collect();
    cuts.sort_unstable();

    let whole = feed([stream]);
    let mut pieces = Vec::new();
    let mut at = 0;
    for c in cuts {
        pieces.push(&stream[at..c]);
        at = c;
    }
    pieces.push(&stream[at..]);
    assert_eq!(feed(pieces), whole, "split at cut points");
    if stream.len() <= 128 {
        assert_eq!(feed(stream.chunks(1)), whole, "byte by byte");
    }
});
