//! `credbridge-man`: writes the man page credbridge(1) to stdout.
//!
//!     cargo run -q -p credbridge-man > credbridge.1 && man -l credbridge.1

use std::io::Write;

fn main() -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(&credbridge_man::page()?)?;
    out.flush()
}
