//! Logs on stderr: `credbridge: level: message` on a terminal, `<N>message` under journald
//! (systemd adds timestamps and reads the `<N>` priority prefix, sd-daemon(3)).

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::cli::{Command, LogLevel};

struct Format {
    journal: bool,
}

fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

fn label(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

impl<S, N> FormatEvent<S, N> for Format
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut msg = String::new();
        ctx.field_format()
            .format_fields(Writer::new(&mut msg), event)?;
        let level = event.metadata().level();
        // Every line gets the prefix: a multi-line error with a hint must not become an
        // error line followed by info lines in the journal.
        for line in msg.lines() {
            if self.journal {
                writeln!(writer, "<{}>{}", priority(level), line)?;
            } else {
                writeln!(writer, "credbridge: {}: {}", label(level), line)?;
            }
        }
        Ok(())
    }
}

/// Whether stderr is the journal stream systemd set up (JOURNAL_STREAM=dev:ino, systemd.exec(5)).
pub fn stderr_is_journal(journal_stream: Option<&str>) -> bool {
    let Some((dev, ino)) = journal_stream.and_then(|v| v.split_once(':')) else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr()) else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
}

pub fn init(level: Level, journal: bool) {
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .event_format(Format { journal })
        .try_init();
}

/// `--log-level` as tracing's level.
pub fn level(command: &Command) -> Level {
    let (Command::Run(args) | Command::Render(args)) = command;
    match args.log_level {
        LogLevel::Error => Level::ERROR,
        LogLevel::Warn => Level::WARN,
        LogLevel::Info => Level::INFO,
        LogLevel::Debug => Level::DEBUG,
    }
}
