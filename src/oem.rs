//! SMBIOS type 11 OEM strings: encoding credentials into them and checking, before anything
//! starts, the limits that hypervisors do not check and guests enforce silently.

use std::fmt;

use crate::credentials::{Credential, SecretBytes};
use base64::Engine;

pub const BINARY_PREFIX: &str = "io.systemd.credential.binary:";
pub const PLAIN_PREFIX: &str = "io.systemd.credential:";

/// The type 11 count byte is a u8; cloud-hypervisor writes `len() as u8`, so 256 strings
/// silently become 0.
pub const MAX_STRINGS: usize = 255;
/// Guests with systemd < 257 read only this much of the type 11 entry (systemd.md section 2).
pub const DEFAULT_BUDGET: usize = 4096;
/// Formatted header of a type 11 structure: type, length, handle (2), count.
const ENTRY_HEADER: usize = 5;
/// cloud-hypervisor's table must end below 1 MiB: sum(len + 1) <= 65398 with no system strings.
pub const CH_STRINGS_CEILING: usize = 65398;

/// How a credential is written into its OEM string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `io.systemd.credential.binary:NAME=BASE64`: safe anywhere, 4/3 the size.
    Binary,
    /// `io.systemd.credential:NAME=VALUE`: raw bytes; only for channels that carry any UTF-8
    /// byte-exact (the REST API's JSON, a QEMU `path=` file) and values without NUL.
    Plain,
}

impl fmt::Display for Form {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Form::Binary => "binary",
            Form::Plain => "plain",
        })
    }
}

/// Where a string came from, for error messages and `render`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Already in the hypervisor's argv (microvm.nix puts `vmm.notify_socket` there).
    Argv,
    /// In a file the hypervisor's argv names (QEMU's `-smbios type=11,path=FILE`): not a
    /// credential of ours, but possibly a secret (it is the pattern credbridge replaces), so
    /// never shown.
    ArgvFile(std::path::PathBuf),
    /// `--oem-string`.
    Flag,
    /// Added by credbridge itself (the guest notify socket address).
    Credbridge,
    /// A credential from the credentials directory.
    Credential { name: String, form: Form },
}

pub struct OemString {
    bytes: SecretBytes,
    pub origin: Origin,
    /// The credential name the guest will import this as, if it is a credential string.
    pub guest_name: Option<String>,
}

impl fmt::Debug for OemString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OemString")
            .field("origin", &self.origin)
            .field("guest_name", &self.guest_name)
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl OemString {
    /// A string that is not secret (argv, `--oem-string`, credbridge's own).
    pub fn public(s: &str, origin: Origin) -> Self {
        OemString {
            guest_name: credential_name_of(s.as_bytes()),
            bytes: SecretBytes::from_slice(s.as_bytes()),
            origin,
        }
    }

    /// Encodes one credential. `plain_ok` says whether the delivery channel carries raw UTF-8.
    pub fn from_credential(cred: &Credential, plain_ok: bool) -> Self {
        let value = cred.value.expose();
        let plain = plain_ok && !value.contains(&0) && std::str::from_utf8(value).is_ok();
        let (prefix, form) = if plain {
            (PLAIN_PREFIX, Form::Plain)
        } else {
            (BINARY_PREFIX, Form::Binary)
        };
        let b64 = base64::engine::general_purpose::STANDARD;
        let value_len = if plain {
            value.len()
        } else {
            base64::encoded_len(value.len(), true).unwrap_or(usize::MAX)
        };
        let head = prefix.len() + cred.guest_name.len() + 1;
        // Sized once so that no reallocation leaves an unzeroed copy of the secret behind.
        let mut bytes = SecretBytes::zeroed(head + value_len);
        bytes[..prefix.len()].copy_from_slice(prefix.as_bytes());
        bytes[prefix.len()..head - 1].copy_from_slice(cred.guest_name.as_bytes());
        bytes[head - 1] = b'=';
        if plain {
            bytes[head..].copy_from_slice(value);
        } else {
            let written = b64
                .encode_slice(value, &mut bytes[head..])
                .expect("buffer sized by encoded_len");
            debug_assert_eq!(written, value_len);
        }
        OemString {
            bytes,
            origin: Origin::Credential {
                name: cred.name.clone(),
                form,
            },
            guest_name: Some(cred.guest_name.clone()),
        }
    }

    pub fn expose(&self) -> &[u8] {
        &self.bytes
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// A credential credbridge delivers.
    pub fn is_secret(&self) -> bool {
        matches!(self.origin, Origin::Credential { .. })
    }

    /// Never shown, logged or kept longer than needed: credentials and argv files.
    pub fn is_confidential(&self) -> bool {
        matches!(self.origin, Origin::Credential { .. } | Origin::ArgvFile(_))
    }

    /// The hypervisor gets it from its own argv; credbridge only checks it.
    pub fn is_from_argv(&self) -> bool {
        matches!(self.origin, Origin::Argv | Origin::ArgvFile(_))
    }

    /// The bytes the guest's systemd will import for this credential string: the value after
    /// `NAME=`, base64-decoded for the binary form. `None` for a string that is no credential
    /// or whose base64 does not decode (systemd skips such a string too).
    pub fn credential_value(&self) -> Option<SecretBytes> {
        let binary = self.bytes.starts_with(BINARY_PREFIX.as_bytes());
        let rest = self
            .bytes
            .strip_prefix(BINARY_PREFIX.as_bytes())
            .or_else(|| self.bytes.strip_prefix(PLAIN_PREFIX.as_bytes()))?;
        let value = &rest[rest.iter().position(|&b| b == b'=')? + 1..];
        if !binary {
            return Some(SecretBytes::from_slice(value));
        }
        // Sized once: no reallocation may leave an unzeroed copy of the secret behind.
        let mut out = SecretBytes::zeroed(value.len() / 4 * 3 + 3);
        let n = base64::engine::general_purpose::STANDARD
            .decode_slice(value, &mut out[..])
            .ok()?;
        out.truncate(n);
        Some(out)
    }

    /// A string QEMU reads from a file its argv names.
    pub fn from_argv_file(bytes: &[u8], path: std::path::PathBuf) -> Self {
        OemString {
            guest_name: credential_name_of(bytes),
            bytes: SecretBytes::from_slice(bytes),
            origin: Origin::ArgvFile(path),
        }
    }

    /// The string as `render` and logs may show it: public strings whole, credentials with the
    /// value replaced by its size.
    pub fn redacted(&self) -> String {
        match &self.origin {
            Origin::Credential { form, .. } => {
                let prefix = match form {
                    Form::Binary => BINARY_PREFIX,
                    Form::Plain => PLAIN_PREFIX,
                };
                let name = self.guest_name.as_deref().unwrap_or("");
                let value_len = self.len() - prefix.len() - name.len() - 1;
                format!("{prefix}{name}=<redacted {value_len} bytes>")
            }
            Origin::ArgvFile(path) => {
                format!("<{} bytes from {}>", self.len(), path.display())
            }
            _ => String::from_utf8_lossy(&self.bytes).into_owned(),
        }
    }

    /// How errors name this string.
    pub fn subject(&self) -> String {
        match &self.origin {
            Origin::Credential { name, .. } => match &self.guest_name {
                Some(g) if g != name => format!("credential {name:?} (guest name {g:?})"),
                _ => format!("credential {name:?}"),
            },
            Origin::Argv => format!(
                "OEM string {:?} from the hypervisor's argv (--platform / -smbios)",
                self.short()
            ),
            Origin::ArgvFile(path) => format!(
                "the OEM string in {} (named by the hypervisor's argv)",
                path.display()
            ),
            Origin::Flag => format!("--oem-string {:?}", self.short()),
            Origin::Credbridge => format!("credbridge's OEM string {:?}", self.short()),
        }
    }

    fn short(&self) -> String {
        let s = String::from_utf8_lossy(&self.bytes);
        if s.chars().count() > 60 {
            format!("{}...", s.chars().take(60).collect::<String>())
        } else {
            s.into_owned()
        }
    }
}

/// The credential name a systemd guest would import `s` under, if it is a credential string.
pub fn credential_name_of(s: &[u8]) -> Option<String> {
    let rest = s
        .strip_prefix(BINARY_PREFIX.as_bytes())
        .or_else(|| s.strip_prefix(PLAIN_PREFIX.as_bytes()))?;
    let end = rest.iter().position(|&b| b == b'=')?;
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

/// Size of the single type 11 structure all strings form: header, each string and its NUL,
/// and the structure's terminating NUL.
pub fn entry_size(strings: &[OemString]) -> usize {
    ENTRY_HEADER + strings.iter().map(|s| s.len() + 1).sum::<usize>() + 1
}

#[derive(Debug, Clone)]
pub struct Limits {
    /// `--smbios-budget`: the largest type 11 entry allowed.
    pub budget: usize,
    /// The hypervisor's hard ceiling on sum(len + 1), after its other SMBIOS strings.
    pub strings_ceiling: usize,
    /// The hypervisor's name, for messages.
    pub hypervisor: &'static str,
}

impl Limits {
    /// The largest `--smbios-budget` that this ceiling allows.
    pub fn max_budget(&self) -> usize {
        ENTRY_HEADER + self.strings_ceiling + 1
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OemError {
    #[error(
        "{subject} is OEM string number {number} of {count}; one SMBIOS type 11 entry holds at most {MAX_STRINGS}\nhint: pass fewer credentials with --credential NAME, or fewer --oem-string"
    )]
    TooMany {
        subject: String,
        /// The subject's place, counted from 1: the first that does not fit.
        number: usize,
        count: usize,
    },
    #[error(
        "{subject} is empty; an empty OEM string ends the SMBIOS string set early and corrupts the table\nhint: remove it"
    )]
    Empty { subject: String },
    #[error(
        "{subject} contains a NUL byte at offset {offset}; SMBIOS strings end at NUL\nhint: remove it from the OEM string"
    )]
    Nul { subject: String, offset: usize },
    #[error(
        "{second} has guest name {name:?}, already used by {first}; the guest would import only the first\nhint: rename one with --credential NAME=GUEST_NAME"
    )]
    Duplicate {
        name: String,
        first: String,
        second: String,
    },
    #[error(
        "{subject} does not fit the SMBIOS budget: the OEM strings form a {size}-byte type 11 entry, the limit is {budget} bytes (--smbios-budget); guests with systemd < 257 read only the first 4096 bytes of it and silently import a cut credential\nhint: pass fewer or smaller credentials, or raise --smbios-budget (at most {max_budget} for {hypervisor}) if every guest runs systemd >= 257"
    )]
    OverBudget {
        subject: String,
        size: usize,
        budget: usize,
        max_budget: usize,
        hypervisor: &'static str,
    },
    #[error(
        "{subject} does not fit {hypervisor}'s SMBIOS table: the strings need {needed} bytes (each string plus its NUL), the hard limit is {ceiling} bytes; past it the table is written over guest memory\nhint: pass fewer or smaller credentials; this limit cannot be raised"
    )]
    OverCeiling {
        subject: String,
        needed: usize,
        ceiling: usize,
        hypervisor: &'static str,
    },
}

/// Checks every limit, in the order an operator would fix them. Errors name the first string
/// that breaks the limit.
pub fn validate(strings: &[OemString], limits: &Limits) -> Result<(), OemError> {
    if strings.len() > MAX_STRINGS {
        return Err(OemError::TooMany {
            subject: strings[MAX_STRINGS].subject(),
            number: MAX_STRINGS + 1,
            count: strings.len(),
        });
    }
    for s in strings {
        if s.is_empty() {
            return Err(OemError::Empty {
                subject: s.subject(),
            });
        }
        if let Some(offset) = s.expose().iter().position(|&b| b == 0) {
            return Err(OemError::Nul {
                subject: s.subject(),
                offset,
            });
        }
    }
    for (i, s) in strings.iter().enumerate() {
        let Some(name) = &s.guest_name else { continue };
        if let Some(first) = strings[..i]
            .iter()
            .find(|o| o.guest_name.as_ref() == Some(name))
        {
            return Err(OemError::Duplicate {
                name: name.clone(),
                first: first.subject(),
                second: s.subject(),
            });
        }
    }
    let mut strings_sum = 0;
    for s in strings {
        strings_sum += s.len() + 1;
        if strings_sum > limits.strings_ceiling {
            return Err(OemError::OverCeiling {
                subject: s.subject(),
                needed: strings.iter().map(|s| s.len() + 1).sum(),
                ceiling: limits.strings_ceiling,
                hypervisor: limits.hypervisor,
            });
        }
        if ENTRY_HEADER + strings_sum + 1 > limits.budget {
            return Err(OemError::OverBudget {
                subject: s.subject(),
                size: entry_size(strings),
                budget: limits.budget,
                max_budget: limits.max_budget(),
                hypervisor: limits.hypervisor,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::{Credential, Secret};

    fn cred(name: &str, value: &[u8]) -> Credential {
        Credential {
            name: name.into(),
            guest_name: name.into(),
            value: Secret::new(SecretBytes::from_slice(value)),
        }
    }

    fn limits(budget: usize) -> Limits {
        Limits {
            budget,
            strings_ceiling: CH_STRINGS_CEILING,
            hypervisor: "cloud-hypervisor",
        }
    }

    fn decode(s: &OemString) -> Vec<u8> {
        let text = std::str::from_utf8(s.expose()).unwrap();
        let (_, b64) = text.split_once('=').unwrap();
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    }

    #[test]
    fn binary_form_round_trips_random_bytes() {
        // A small xorshift keeps the test deterministic without a dependency.
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for len in [0usize, 1, 2, 3, 4, 255, 256, 1000, 4097] {
            let value: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let s = OemString::from_credential(&cred("k", &value), false);
            assert!(s.expose().starts_with(b"io.systemd.credential.binary:k="));
            assert_eq!(decode(&s), value, "len {len}");
        }
    }

    #[test]
    fn plain_form_only_for_nul_free_utf8_when_allowed() {
        let s = OemString::from_credential(&cred("k", b"a,\"[]\n\t="), true);
        assert_eq!(s.expose(), b"io.systemd.credential:k=a,\"[]\n\t=");
        assert_eq!(
            s.origin,
            Origin::Credential {
                name: "k".into(),
                form: Form::Plain
            }
        );
        let s = OemString::from_credential(&cred("k", b"\xff"), true);
        assert!(s.expose().starts_with(BINARY_PREFIX.as_bytes()));
        let s = OemString::from_credential(&cred("k", b"a\0b"), true);
        assert!(s.expose().starts_with(BINARY_PREFIX.as_bytes()));
        let s = OemString::from_credential(&cred("k", b"abc"), false);
        assert!(s.expose().starts_with(BINARY_PREFIX.as_bytes()));
    }

    #[test]
    fn redaction_hides_the_value_and_keeps_its_size() {
        let s = OemString::from_credential(&cred("api", b"hunter2"), false);
        let r = s.redacted();
        assert_eq!(r, "io.systemd.credential.binary:api=<redacted 12 bytes>");
        assert!(!r.contains("aHVudGVy"));
        let p = OemString::public("vmm.x=1", Origin::Flag);
        assert_eq!(p.redacted(), "vmm.x=1");
    }

    #[test]
    fn strings_from_argv_files_are_never_shown() {
        let s = OemString::from_argv_file(
            b"io.systemd.credential:db=hunter2hunter2",
            "/run/secrets/db".into(),
        );
        assert_eq!(s.redacted(), "<39 bytes from /run/secrets/db>");
        assert!(!s.subject().contains("hunter2"), "{}", s.subject());
        assert_eq!(
            s.guest_name.as_deref(),
            Some("db"),
            "still checked for duplicates"
        );
        assert!(s.is_confidential() && s.is_from_argv() && !s.is_secret());
    }

    #[test]
    fn count_limit_at_below_and_above() {
        let mk = |n: usize| -> Vec<OemString> {
            (0..n)
                .map(|i| OemString::public(&format!("s{i}"), Origin::Flag))
                .collect()
        };
        let l = limits(65404);
        assert!(validate(&mk(254), &l).is_ok());
        assert!(validate(&mk(255), &l).is_ok());
        let e = validate(&mk(256), &l).unwrap_err();
        assert!(matches!(
            &e,
            OemError::TooMany {
                number: 256,
                count: 256,
                ..
            }
        ));
        assert!(e.to_string().contains("\"s255\""), "{e}");
        // Regression (#11): 300 strings named the 256th but called it "number 300".
        let e = validate(&mk(300), &l).unwrap_err().to_string();
        assert!(
            e.starts_with("--oem-string \"s255\" is OEM string number 256 of 300;"),
            "{e}"
        );
    }

    #[test]
    fn empty_and_nul_are_refused_with_the_subject() {
        let e = validate(&[OemString::public("", Origin::Argv)], &limits(4096)).unwrap_err();
        assert!(matches!(e, OemError::Empty { .. }));
        let c = OemString::from_credential(&cred("k", b"a\0b"), false);
        assert!(
            validate(&[c], &limits(4096)).is_ok(),
            "binary form has no NUL"
        );
        let e = validate(&[OemString::public("a\0b", Origin::Flag)], &limits(4096)).unwrap_err();
        assert_eq!(
            e,
            OemError::Nul {
                subject: "--oem-string \"a\\0b\"".into(),
                offset: 1
            }
        );
    }

    #[test]
    fn duplicate_guest_names_across_origins() {
        let a = OemString::public("io.systemd.credential:x=1", Origin::Argv);
        let b = OemString::from_credential(&cred("x", b"2"), false);
        let e = validate(&[a, b], &limits(4096)).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("credential \"x\"") && text.contains("--platform"),
            "{text}"
        );
        // Non-credential strings never collide.
        let a = OemString::public("hello", Origin::Argv);
        let b = OemString::public("hello", Origin::Flag);
        assert!(validate(&[a, b], &limits(4096)).is_ok());
    }

    #[test]
    fn budget_at_below_and_above() {
        // One string of n bytes: entry = 5 + (n + 1) + 1 = n + 7.
        let one = |n: usize| vec![OemString::public(&"a".repeat(n), Origin::Flag)];
        assert!(
            validate(&one(4089), &limits(4096)).is_ok(),
            "entry of exactly 4096"
        );
        assert!(validate(&one(4088), &limits(4096)).is_ok());
        let e = validate(&one(4090), &limits(4096)).unwrap_err();
        assert!(matches!(
            e,
            OemError::OverBudget {
                size: 4097,
                budget: 4096,
                ..
            }
        ));
        let text = e.to_string();
        assert!(text.contains("4097") && text.contains("4096") && text.contains("--smbios-budget"));
        assert!(validate(&one(4090), &limits(4097)).is_ok(), "raised budget");
    }

    #[test]
    fn over_budget_names_the_first_string_that_does_not_fit() {
        let a = OemString::from_credential(&cred("small", &[1; 100]), false);
        let b = OemString::from_credential(&cred("big", &[2; 4000]), false);
        let c = OemString::from_credential(&cred("after", &[3; 10]), false);
        let e = validate(&[a, b, c], &limits(4096)).unwrap_err();
        assert!(e.to_string().starts_with("credential \"big\""), "{e}");
    }

    #[test]
    fn ceiling_at_below_and_above() {
        let l = limits(usize::MAX);
        let max = CH_STRINGS_CEILING;
        // Two strings: sum(len + 1) = a + b + 2.
        let two = |a: usize, b: usize| {
            vec![
                OemString::public(&"a".repeat(a), Origin::Flag),
                OemString::public(&"b".repeat(b), Origin::Flag),
            ]
        };
        assert!(validate(&two(max / 2 - 1, max / 2 - 1), &l).is_ok());
        assert!(validate(&two(max / 2 - 1, max / 2 - 2), &l).is_ok());
        let e = validate(&two(max / 2 - 1, max / 2), &l).unwrap_err();
        assert!(
            matches!(e, OemError::OverCeiling { needed, ceiling, .. } if needed == max + 1 && ceiling == max)
        );
        assert_eq!(l.max_budget(), 65404);
    }

    #[test]
    fn credential_names_are_found_in_public_strings() {
        assert_eq!(
            credential_name_of(b"io.systemd.credential:vmm.notify_socket=vsock-stream:2:8888"),
            Some("vmm.notify_socket".into())
        );
        assert_eq!(
            credential_name_of(b"io.systemd.credential.binary:a=b=="),
            Some("a".into())
        );
        assert_eq!(credential_name_of(b"io.systemd.credential:noequals"), None);
        assert_eq!(credential_name_of(b"other"), None);
    }
}
