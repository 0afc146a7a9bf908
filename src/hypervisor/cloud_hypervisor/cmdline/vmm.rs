//! The VMM-level options that CH reads itself before (or instead of) building a VM config:
//! `--api-socket`, `--event-monitor`, `--log-format` and `--restore`.

use std::os::fd::RawFd;
use std::path::PathBuf;

use super::grammar::{Options, parse_integer_list};
use super::{ArgvError, SocketArg};

/// `path=<p>`, `fd=<n>` or a bare path. CH ignores option-syntax errors here and keeps whatever
/// keys it read before the error; with neither key the whole string is the path. Only an `fd`
/// that is not a number fails.
pub(crate) fn api_socket(value: &str) -> Result<SocketArg, ArgvError> {
    let mut options = Options::new(&["path", "fd"]);
    let _ignored = options.parse(value);
    if let Some(fd) = options.get("fd") {
        let fd = fd.parse::<RawFd>().map_err(|_| ArgvError::Invalid {
            option: "--api-socket".into(),
            reason: "`fd` is not a file descriptor number".into(),
        })?;
        return Ok(SocketArg::Fd(fd));
    }
    Ok(SocketArg::Path(PathBuf::from(
        options.get("path").unwrap_or_else(|| value.to_owned()),
    )))
}

/// `path=<p>` or `fd=<n>`, strictly parsed; `fd` wins. A bare path is refused, and so is an
/// empty `fd=`/`path=`, which make CH panic.
pub(crate) fn event_monitor(value: &str) -> Result<SocketArg, ArgvError> {
    const OPTION: &str = "--event-monitor";
    let invalid = |reason: &str| ArgvError::Invalid {
        option: OPTION.into(),
        reason: reason.into(),
    };
    let mut options = Options::new(&["path", "fd"]);
    options.parse(value).map_err(|error| ArgvError::Value {
        option: OPTION.into(),
        error,
    })?;
    if options.is_set("fd") {
        let fd = options
            .scalar::<RawFd>("fd", "a file descriptor number")
            .map_err(|error| ArgvError::Value {
                option: OPTION.into(),
                error,
            })?;
        return fd
            .map(SocketArg::Fd)
            .ok_or_else(|| invalid("`fd=` needs a number"));
    }
    if options.is_set("path") {
        return options
            .get("path")
            .map(|path| SocketArg::Path(path.into()))
            .ok_or_else(|| invalid("`path=` needs a path"));
    }
    Err(invalid("`path=` or `fd=` is required"))
}

const LOG_TOKENS: &[&str] = &[
    "boottime",
    "wallclock",
    "glog",
    "localglog",
    "pid",
    "tid",
    "thread",
    "level",
    "levelchar",
    "location",
    "msg",
];
const LOG_TIME_FIELDS: &[&str] = &[
    "year", "month", "day", "hour", "minute", "second", "micros", "offset",
];

/// CH 54 builds its logger from this format before anything else, and exits on a bad one.
pub(crate) fn check_log_format(format: &str) -> Result<(), ArgvError> {
    let invalid = |reason: String| ArgvError::Invalid {
        option: "--log-format".into(),
        reason,
    };
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(ch) => name.push(ch),
                        None => return Err(invalid("unterminated `{`".into())),
                    }
                }
                let field = name.strip_prefix("local").unwrap_or(&name);
                if !LOG_TIME_FIELDS.contains(&field) && !LOG_TOKENS.contains(&name.as_str()) {
                    return Err(invalid(format!("unknown token `{{{name}}}`")));
                }
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
            }
            '}' => return Err(invalid("unmatched `}`".into())),
            _ => {}
        }
    }
    Ok(())
}

/// Parses `--restore` as CH does when no payload is given, and returns the fds it names
/// (`net_fds`, `vfio_fds`, `iommufd_fd`, in that order), which must stay open for CH.
pub(crate) fn restore_fds(value: &str) -> Result<Vec<RawFd>, ArgvError> {
    const OPTION: &str = "--restore";
    let value_error = |error| ArgvError::Value {
        option: OPTION.into(),
        error,
    };
    let mut options = Options::new(&[
        "source_url",
        "prefault",
        "memory_restore_mode",
        "net_fds",
        "vfio_fds",
        "iommufd_fd",
        "resume",
        "zone_updates",
    ]);
    options.parse(value).map_err(value_error)?;
    if options.get("source_url").is_none() {
        return Err(ArgvError::Invalid {
            option: OPTION.into(),
            reason: "`source_url` is required".into(),
        });
    }
    options.toggle("prefault").map_err(value_error)?;
    options
        .scalar_with("memory_restore_mode", "copy|ondemand", |s| {
            matches!(s.to_lowercase().as_str(), "copy" | "ondemand").then_some(())
        })
        .map_err(value_error)?;
    let net_fds = options
        .tuple_list::<String, Vec<u64>>("net_fds", parse_integer_list::<u64>)
        .map_err(value_error)?;
    let vfio_fds = options
        .tuple_list::<String, u64>("vfio_fds", |s| s.parse().ok())
        .map_err(value_error)?;
    let iommufd_fd = options
        .scalar::<RawFd>("iommufd_fd", "a file descriptor number")
        .map_err(value_error)?;
    options.toggle("resume").map_err(value_error)?;
    options
        .tuple_list::<String, u32>("zone_updates", |s| s.parse().ok())
        .map_err(value_error)?;

    // CH truncates fd numbers with `as i32`; so do we, to name the same fds.
    let mut fds: Vec<RawFd> = net_fds
        .into_iter()
        .flatten()
        .flat_map(|(_, fds)| fds.into_iter().map(|fd| fd as RawFd))
        .collect();
    fds.extend(vfio_fds.into_iter().flatten().map(|(_, fd)| fd as RawFd));
    fds.extend(iommufd_fd);
    Ok(fds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_socket_forms() {
        let table = [
            ("fd=3", Some(SocketArg::Fd(3))),
            ("path=/run/a.sock,fd=4", Some(SocketArg::Fd(4))),
            ("/run/x.sock", Some(SocketArg::Path("/run/x.sock".into()))),
            (
                "path=/run/a.sock",
                Some(SocketArg::Path("/run/a.sock".into())),
            ),
            ("fd=", Some(SocketArg::Path("fd=".into()))),
            // Keys read before a syntax error still count; after it, nothing does.
            ("fd=5,bogus", Some(SocketArg::Fd(5))),
            ("bogus,fd=5", Some(SocketArg::Path("bogus,fd=5".into()))),
            ("fd=abc", None),
        ];
        for (input, want) in table {
            assert_eq!(api_socket(input).ok(), want, "{input:?}");
        }
    }

    #[test]
    fn event_monitor_forms() {
        let table = [
            ("fd=4", Some(SocketArg::Fd(4))),
            ("path=/run/ev", Some(SocketArg::Path("/run/ev".into()))),
            ("/run/ev", None),
            ("file=/run/ev", None),
            ("fd=x", None),
            ("fd=", None),
            ("path=", None),
        ];
        for (input, want) in table {
            assert_eq!(event_monitor(input).ok(), want, "{input:?}");
        }
    }

    #[test]
    fn log_formats() {
        for good in [
            "cloud-hypervisor: {boottime}s: <{thread}> {level}:{location} -- {msg}",
            "{wallclock} {level} {msg}",
            "{localhour}:{minute} {{literal}} {localglog}",
            "",
        ] {
            assert!(check_log_format(good).is_ok(), "{good:?}");
        }
        for bad in ["{bogus} {msg}", "{msg", "a}b", "{localpid}"] {
            assert!(check_log_format(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn restore_fds_in_order() {
        let value =
            "source_url=file:///s,net_fds=[net0@[3,4],net1@[5]],vfio_fds=[v@6],iommufd_fd=7";
        assert_eq!(restore_fds(value).ok(), Some(vec![3, 4, 5, 6, 7]));
        assert!(restore_fds("source_url=file:///s,memory_restore_mode=lazy").is_err());
        assert!(restore_fds("prefault=on").is_err());
    }
}
