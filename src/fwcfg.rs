//! fw_cfg delivery: credentials as fw_cfg files `opt/io.systemd.credentials/NAME`, and the
//! choice, per credential, between that channel and SMBIOS type 11, with the limits of each.
//!
//! Facts (systemd's `src/core/import-creds.c`, v252 and v257 alike): PID 1 imports the fw_cfg
//! directory `/sys/firmware/qemu_fw_cfg/by_name/opt/io.systemd.credentials/` first, entries
//! sorted by name, then the SMBIOS strings, into one context whose `credential_size_ok()`
//! skips, with only a warning in the guest's log, a credential larger than
//! `CREDENTIAL_SIZE_MAX` and one that would take the sum past `CREDENTIALS_TOTAL_SIZE_MAX`
//! (both 1 MiB, `src/shared/creds-util.h`). A name used twice keeps its first import.

use std::fmt;

use zeroize::Zeroizing;

use crate::cli::Channel;
use crate::credentials::SecretBytes;
use crate::oem::{self, Limits, OemError, OemString, Origin};

/// Every fw_cfg credential's file name starts with this (27 bytes).
pub const NAME_PREFIX: &str = "opt/io.systemd.credentials/";
/// fw_cfg file names live in a 56-byte field with its NUL (QEMU's `FW_CFG_MAX_FILE_PATH`;
/// cloud-hypervisor silently cuts longer ones to 55).
pub const NAME_MAX: usize = 55;
/// So a credential's guest name may have at most 28 bytes on this channel.
pub const GUEST_NAME_MAX: usize = NAME_MAX - NAME_PREFIX.len();
/// systemd's `CREDENTIAL_SIZE_MAX` (1 MiB): a larger credential is skipped.
pub const SYSTEMD_CREDENTIAL_MAX: usize = 1024 * 1024;
/// systemd's `CREDENTIALS_TOTAL_SIZE_MAX` (1 MiB), over every channel together.
pub const SYSTEMD_TOTAL_MAX: usize = 1024 * 1024;
/// QEMU 7.2 has 32 fw_cfg file slots and aborts on an assertion when they run out; its own
/// files take 6 to 14 of them (measured: 19 left on q35 -nodefaults, 18 with -kernel, 22 on
/// pc, 26 on microvm). 16 leaves room for a few devices' ROMs.
pub const QEMU_ITEMS_MAX: usize = 16;

/// One credential as a fw_cfg file.
pub struct FwCfgItem {
    pub guest_name: String,
    bytes: SecretBytes,
    /// How errors and `render` name it (never its value).
    pub subject: String,
    /// credbridge's own `vmm.notify_socket` (not secret; shown whole).
    pub public: bool,
}

impl fmt::Debug for FwCfgItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FwCfgItem")
            .field("guest_name", &self.guest_name)
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl FwCfgItem {
    pub fn public(guest_name: &str, value: &str) -> Self {
        FwCfgItem {
            guest_name: guest_name.to_owned(),
            bytes: SecretBytes::from_slice(value.as_bytes()),
            subject: format!("credbridge's credential {guest_name:?}"),
            public: true,
        }
    }

    /// The fw_cfg file name, `opt/io.systemd.credentials/NAME`.
    pub fn name(&self) -> String {
        format!("{NAME_PREFIX}{}", self.guest_name)
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

    /// The forms of the value that [`crate::scrub`] takes out of text: the raw bytes, their
    /// base64, and their lossy UTF-8 where they are not UTF-8.
    pub fn needles(&self) -> Vec<crate::scrub::Needle> {
        use base64::Engine;
        let mut out = Vec::new();
        if self.public || self.len() < crate::scrub::MIN_BARE_VALUE {
            return out;
        }
        let bare = |b: Zeroizing<Vec<u8>>| crate::scrub::Needle::new(b, "<redacted>".into());
        out.push(bare(Zeroizing::new(self.bytes.to_vec())));
        let len = base64::encoded_len(self.len(), false).unwrap_or(0);
        let mut enc = Zeroizing::new(vec![0u8; len]);
        let nopad = base64::engine::general_purpose::STANDARD_NO_PAD;
        if nopad.encode_slice(&self.bytes[..], &mut enc[..]).is_ok() {
            out.push(bare(enc));
        }
        if std::str::from_utf8(&self.bytes).is_err() {
            let lossy = String::from_utf8_lossy(&self.bytes)
                .into_owned()
                .into_bytes();
            out.push(bare(Zeroizing::new(lossy)));
        }
        out
    }

    /// The value as `render` and logs may show it.
    pub fn redacted(&self) -> String {
        if self.public {
            String::from_utf8_lossy(&self.bytes).into_owned()
        } else {
            format!("<redacted {} bytes>", self.len())
        }
    }
}

/// Where one credential goes, and why, for `render`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub guest_name: String,
    pub channel: &'static str,
    pub reason: String,
}

/// Whether the hypervisor can carry fw_cfg files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Support {
    /// Yes, with at most this many files (`None`: no count limit).
    Yes { max_items: Option<usize> },
    /// No: the reason, as the error says it.
    No(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChannelError {
    #[error(
        "{subject} is not a credential, and {machine} has no SMBIOS tables: the guest would never see it (QEMU accepts -smbios there and drops it); fw_cfg carries only credentials\nhint: pass it as a credential file instead, or use a machine with SMBIOS (-machine q35 or pc)"
    )]
    NotACredential { subject: String, machine: String },
    #[error(
        "--channel smbios, but {machine} has no SMBIOS tables, so the guest would get no credential\nhint: use --channel auto (fw_cfg on this machine), or a machine with SMBIOS (-machine q35 or pc)"
    )]
    SmbiosForced { machine: String },
    #[error(
        "{subject} cannot go over SMBIOS ({why}), and not over fw_cfg either: its guest name is {len} bytes, and the fw_cfg file name opt/io.systemd.credentials/NAME holds at most {NAME_MAX} bytes, so NAME at most {GUEST_NAME_MAX}\nhint: give it a guest name of at most {GUEST_NAME_MAX} bytes with --credential NAME=GUEST_NAME{smbios_hint}"
    )]
    NameTooLong {
        subject: String,
        why: String,
        len: usize,
        smbios_hint: &'static str,
    },
    #[error(
        "{subject} cannot go over SMBIOS ({why}), and not over fw_cfg either: {reason}\nhint: pass fewer or smaller credentials{smbios_hint}"
    )]
    NoFwCfg {
        subject: String,
        why: String,
        reason: String,
        smbios_hint: &'static str,
    },
    #[error(
        "{subject} would be fw_cfg file number {count}; QEMU has 32 fw_cfg file slots, its own files take up to 14 of them, and it aborts when they run out, so credbridge adds at most {max} ({QEMU_ITEMS_MAX} less the argv's own -fw_cfg files)\nhint: pass fewer credentials with --credential NAME, or let small ones go over SMBIOS (--channel auto on a machine with SMBIOS)"
    )]
    TooManyItems {
        subject: String,
        count: usize,
        max: usize,
    },
    #[error(
        "{subject} is {size} bytes; the guest's systemd imports at most {SYSTEMD_CREDENTIAL_MAX} bytes per credential (CREDENTIAL_SIZE_MAX) and skips a larger one with only a warning in the guest's log\nhint: make it smaller, or split it into several credentials (all of them together must stay within {SYSTEMD_TOTAL_MAX} bytes)"
    )]
    OverCredentialMax { subject: String, size: usize },
    #[error(
        "{subject} takes the guest's credentials to {total} bytes; the guest's systemd imports at most {SYSTEMD_TOTAL_MAX} bytes of credentials in all, over every channel (CREDENTIALS_TOTAL_SIZE_MAX), and skips the rest with only a warning in the guest's log\nhint: pass fewer or smaller credentials (--credential NAME selects)"
    )]
    OverTotal { subject: String, total: usize },
    #[error(transparent)]
    Oem(#[from] OemError),
}

/// The outcome: the SMBIOS strings (in order, for [`oem::validate`]), the fw_cfg files, and
/// one [`Choice`] per credential.
#[derive(Debug, Default)]
pub struct Split {
    pub smbios: Vec<OemString>,
    pub fw_cfg: Vec<FwCfgItem>,
    pub choices: Vec<Choice>,
}

/// A string whose channel credbridge chooses: a credential it delivers, or its own
/// `vmm.notify_socket` (a credential to the guest like any other).
fn choosable(s: &OemString) -> bool {
    matches!(s.origin, Origin::Credential { .. })
        || (s.origin == Origin::Credbridge && s.guest_name.is_some())
}

/// Chooses the channel of every credential in `strings` (SMBIOS order: the argv's own first),
/// then checks systemd's limits over both channels together.
///
/// `no_smbios`: the machine as messages name it, when it has no SMBIOS. Strings that are not
/// credbridge's credentials (the argv's own, `--oem-string`) always stay SMBIOS.
pub fn choose(
    strings: Vec<OemString>,
    no_smbios: Option<&str>,
    support: &Support,
    channel: Channel,
    limits: &Limits,
) -> Result<Split, ChannelError> {
    duplicates(&strings)?;
    if let Some(machine) = no_smbios {
        if channel == Channel::Smbios {
            return Err(ChannelError::SmbiosForced {
                machine: machine.to_owned(),
            });
        }
        if let Some(s) = strings.iter().find(|s| !choosable(s)) {
            return Err(ChannelError::NotACredential {
                subject: s.subject(),
                machine: machine.to_owned(),
            });
        }
    }
    // What the SMBIOS entry holds before any credential: the strings that must stay there.
    let mut sum: usize = strings
        .iter()
        .filter(|s| !choosable(s))
        .map(|s| s.len() + 1)
        .sum();
    let mut count = strings.iter().filter(|s| !choosable(s)).count();
    let ceiling = limits.strings_ceiling.min(limits.budget.saturating_sub(6));
    let mut out = Split::default();
    for s in strings {
        if !choosable(&s) {
            out.smbios.push(s);
            continue;
        }
        let name = s.guest_name.clone().unwrap_or_default();
        // Each string takes its length plus a NUL.
        let fits = sum + s.len() < ceiling && count < oem::MAX_STRINGS;
        // Why SMBIOS will not do, if it will not.
        let why = match (no_smbios, channel) {
            (_, Channel::Smbios) => None,
            (Some(machine), _) => Some(format!("{machine} has no SMBIOS")),
            (None, Channel::FwCfg) => Some("--channel fw-cfg".to_owned()),
            (None, Channel::Auto) if fits => None,
            (None, Channel::Auto) => Some(if count >= oem::MAX_STRINGS {
                format!(
                    "the type 11 entry holds at most {} strings",
                    oem::MAX_STRINGS
                )
            } else {
                format!(
                    "it would make the type 11 entry {} bytes, over the budget of {} (--smbios-budget)",
                    oem::entry_size(&out.smbios) + s.len() + 1,
                    limits.budget.min(limits.max_budget())
                )
            }),
        };
        let Some(why) = why else {
            sum += s.len() + 1;
            count += 1;
            out.choices.push(Choice {
                guest_name: name,
                channel: "SMBIOS",
                reason: if channel == Channel::Smbios {
                    "--channel smbios".into()
                } else {
                    format!(
                        "fits the SMBIOS budget ({} of {} bytes so far)",
                        6 + sum,
                        limits.budget
                    )
                },
            });
            out.smbios.push(s);
            continue;
        };
        let smbios_hint = if no_smbios.is_some() {
            ", or use a machine with SMBIOS (-machine q35 or pc)"
        } else if channel == Channel::FwCfg {
            ", or let it go over SMBIOS (--channel auto)"
        } else {
            ", or raise --smbios-budget if every guest runs systemd >= 257"
        };
        if let Support::No(reason) = support {
            return Err(ChannelError::NoFwCfg {
                subject: s.subject(),
                why,
                reason: reason.clone(),
                smbios_hint,
            });
        }
        if name.len() > GUEST_NAME_MAX {
            return Err(ChannelError::NameTooLong {
                subject: s.subject(),
                why,
                len: name.len(),
                smbios_hint,
            });
        }
        if let Support::Yes {
            max_items: Some(max),
        } = support
        {
            if out.fw_cfg.len() >= *max {
                return Err(ChannelError::TooManyItems {
                    subject: s.subject(),
                    count: out.fw_cfg.len() + 1,
                    max: *max,
                });
            }
        }
        let value = s
            .credential_value()
            .expect("credbridge's credential strings always decode");
        out.choices.push(Choice {
            guest_name: name.clone(),
            channel: "fw_cfg",
            reason: why,
        });
        out.fw_cfg.push(FwCfgItem {
            guest_name: name,
            bytes: value,
            subject: s.subject(),
            public: s.origin == Origin::Credbridge,
        });
    }
    systemd_limits(&out)?;
    Ok(out)
}

/// A guest name used twice, across both channels: the guest keeps only the first it imports.
fn duplicates(strings: &[OemString]) -> Result<(), OemError> {
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
    Ok(())
}

/// systemd's per-credential and total limits, in the order it imports: fw_cfg by name, then
/// SMBIOS in order, so the error names the credential the guest would skip.
pub fn systemd_limits(split: &Split) -> Result<(), ChannelError> {
    let mut fw: Vec<&FwCfgItem> = split.fw_cfg.iter().collect();
    fw.sort_by(|a, b| a.guest_name.as_bytes().cmp(b.guest_name.as_bytes()));
    let sizes = fw.iter().map(|i| (i.subject.clone(), i.len())).chain(
        split
            .smbios
            .iter()
            .filter_map(|s| Some((s.subject(), s.credential_value()?.len()))),
    );
    let mut total = 0usize;
    for (subject, size) in sizes {
        if size > SYSTEMD_CREDENTIAL_MAX {
            return Err(ChannelError::OverCredentialMax { subject, size });
        }
        total += size;
        if total > SYSTEMD_TOTAL_MAX {
            return Err(ChannelError::OverTotal { subject, total });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::SecretBytes;
    use crate::credentials::{Credential, Secret};

    fn cred(name: &str, len: usize) -> OemString {
        let value: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
        OemString::from_credential(
            &Credential {
                name: name.into(),
                guest_name: name.into(),
                value: Secret::new(SecretBytes::from_slice(&value)),
            },
            true,
        )
    }

    /// QEMU's limits (`hypervisor::qemu::limits`), spelled out: a neutral module's tests do
    /// not reach into a hypervisor's wing either.
    fn limits(budget: usize) -> Limits {
        Limits {
            budget,
            strings_ceiling: 61433,
            hypervisor: "QEMU",
        }
    }

    const QEMU: Support = Support::Yes {
        max_items: Some(QEMU_ITEMS_MAX),
    };

    fn channels(split: &Split) -> Vec<(&str, &str)> {
        split
            .choices
            .iter()
            .map(|c| (c.guest_name.as_str(), c.channel))
            .collect()
    }

    #[test]
    fn the_choice_table() {
        // (machine without SMBIOS, --channel, credentials, expected channels)
        let big = 5000;
        type Case<'a> = (
            Option<&'a str>,
            Channel,
            &'a [(&'a str, usize)],
            &'a [&'a str],
        );
        let cases: &[Case] = &[
            (
                None,
                Channel::Auto,
                &[("a", 10), ("b", 10)],
                &["SMBIOS", "SMBIOS"],
            ),
            // The big one does not fit the 4096 budget; the small one after it still does.
            (
                None,
                Channel::Auto,
                &[("a", 10), ("big", big), ("c", 10)],
                &["SMBIOS", "fw_cfg", "SMBIOS"],
            ),
            (
                Some("-machine microvm"),
                Channel::Auto,
                &[("a", 10), ("b", 10)],
                &["fw_cfg", "fw_cfg"],
            ),
            (
                Some("-machine microvm"),
                Channel::FwCfg,
                &[("a", 10)],
                &["fw_cfg"],
            ),
            (
                None,
                Channel::FwCfg,
                &[("a", 10), ("b", 10)],
                &["fw_cfg", "fw_cfg"],
            ),
            (
                None,
                Channel::Smbios,
                &[("a", 10), ("b", 10)],
                &["SMBIOS", "SMBIOS"],
            ),
        ];
        for (machine, channel, creds, want) in cases {
            let strings = creds.iter().map(|(n, l)| cred(n, *l)).collect();
            let split = choose(strings, *machine, &QEMU, *channel, &limits(4096)).unwrap();
            let got: Vec<&str> = channels(&split).iter().map(|c| c.1).collect();
            assert_eq!(&got, want, "{machine:?} {channel:?} {creds:?}");
            assert_eq!(split.smbios.len() + split.fw_cfg.len(), creds.len());
        }
    }

    #[test]
    fn reasons_say_why() {
        let split = choose(
            vec![cred("a", 10), cred("big", 5000)],
            None,
            &QEMU,
            Channel::Auto,
            &limits(4096),
        )
        .unwrap();
        assert!(
            split.choices[0]
                .reason
                .starts_with("fits the SMBIOS budget")
        );
        assert!(
            split.choices[1].reason.contains("over the budget of 4096"),
            "{:?}",
            split.choices[1]
        );
        let split = choose(
            vec![cred("a", 10)],
            Some("microvm (the default of qemu-system-x86_64-microvm)"),
            &QEMU,
            Channel::Auto,
            &limits(4096),
        )
        .unwrap();
        assert_eq!(
            split.choices[0].reason,
            "microvm (the default of qemu-system-x86_64-microvm) has no SMBIOS"
        );
    }

    #[test]
    fn fw_cfg_items_hold_the_raw_bytes_of_either_form() {
        let binary = OemString::from_credential(
            &Credential {
                name: "bin".into(),
                guest_name: "bin".into(),
                value: Secret::new(SecretBytes::from_slice(&(0..=255u8).collect::<Vec<_>>())),
            },
            true,
        );
        let split = choose(
            vec![binary, cred("plain", 33)],
            None,
            &QEMU,
            Channel::FwCfg,
            &limits(4096),
        )
        .unwrap();
        assert_eq!(split.fw_cfg[0].expose(), (0..=255u8).collect::<Vec<_>>());
        assert_eq!(split.fw_cfg[0].name(), "opt/io.systemd.credentials/bin");
        assert_eq!(split.fw_cfg[1].len(), 33);
        assert_eq!(split.fw_cfg[1].redacted(), "<redacted 33 bytes>");
    }

    #[test]
    fn guest_name_at_below_and_above_28_bytes() {
        assert_eq!(GUEST_NAME_MAX, 28);
        for (len, ok) in [(27, true), (28, true), (29, false)] {
            let name = "n".repeat(len);
            let r = choose(
                vec![cred(&name, 10)],
                Some("-machine microvm"),
                &QEMU,
                Channel::Auto,
                &limits(4096),
            );
            assert_eq!(r.is_ok(), ok, "{len}");
            if !ok {
                let e = r.unwrap_err().to_string();
                assert!(
                    e.contains("-machine microvm has no SMBIOS")
                        && e.contains("at most 55 bytes")
                        && e.contains("NAME at most 28")
                        && e.contains("--credential NAME=GUEST_NAME"),
                    "{e}"
                );
            }
        }
        // Over the budget on an SMBIOS machine: the error names both limits and the flag.
        let e = choose(
            vec![cred(&"n".repeat(29), 5000)],
            None,
            &QEMU,
            Channel::Auto,
            &limits(4096),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("over the budget of 4096 (--smbios-budget)")
                && e.contains("NAME at most 28")
                && e.contains("raise --smbios-budget"),
            "{e}"
        );
    }

    #[test]
    fn qemu_item_count_at_and_above() {
        let strings = |n: usize| (0..n).map(|i| cred(&format!("c{i}"), 10)).collect();
        let m = Some("-machine microvm");
        assert!(
            choose(
                strings(QEMU_ITEMS_MAX),
                m,
                &QEMU,
                Channel::Auto,
                &limits(4096)
            )
            .is_ok()
        );
        let e = choose(
            strings(QEMU_ITEMS_MAX + 1),
            m,
            &QEMU,
            Channel::Auto,
            &limits(4096),
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                ChannelError::TooManyItems {
                    count: 17,
                    max: 16,
                    ..
                }
            ),
            "{e}"
        );
        // No count limit where the hypervisor has none.
        let any = Support::Yes { max_items: None };
        assert!(choose(strings(40), m, &any, Channel::Auto, &limits(4096)).is_ok());
    }

    #[test]
    fn systemd_limits_at_below_and_above() {
        let m = Some("-machine microvm");
        let one = |len| choose(vec![cred("a", len)], m, &QEMU, Channel::Auto, &limits(4096));
        assert!(one(SYSTEMD_CREDENTIAL_MAX - 1).is_ok());
        assert!(one(SYSTEMD_CREDENTIAL_MAX).is_ok());
        assert!(matches!(
            one(SYSTEMD_CREDENTIAL_MAX + 1),
            Err(ChannelError::OverCredentialMax { size: 1048577, .. })
        ));
        // The total counts both channels; systemd imports fw_cfg first, so the SMBIOS one is
        // the one skipped.
        let two = |a, b| {
            choose(
                vec![cred("small", a), cred("big", b)],
                None,
                &QEMU,
                Channel::Auto,
                &limits(4096),
            )
        };
        assert!(two(100, SYSTEMD_TOTAL_MAX - 100).is_ok());
        let e = two(101, SYSTEMD_TOTAL_MAX - 100).unwrap_err();
        assert_eq!(
            e,
            ChannelError::OverTotal {
                subject: "credential \"small\"".into(),
                total: SYSTEMD_TOTAL_MAX + 1
            }
        );
        assert!(e.to_string().contains("CREDENTIALS_TOTAL_SIZE_MAX"));
    }

    #[test]
    fn what_must_stay_smbios_is_refused_without_it() {
        let flag = OemString::public("x=y", Origin::Flag);
        let e = choose(
            vec![flag, cred("a", 1)],
            Some("-machine microvm"),
            &QEMU,
            Channel::Auto,
            &limits(4096),
        )
        .unwrap_err();
        assert!(matches!(e, ChannelError::NotACredential { .. }), "{e}");
        let e = choose(
            vec![cred("a", 1)],
            Some("-machine microvm"),
            &QEMU,
            Channel::Smbios,
            &limits(4096),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--channel smbios") && e.contains("--channel auto"),
            "{e}"
        );
        // A build without fw_cfg: nothing goes that way, and the error says why.
        let no = Support::No("this cloud-hypervisor build lacks the fw_cfg feature".into());
        let e = choose(
            vec![cred("big", 5000)],
            None,
            &no,
            Channel::Auto,
            &limits(4096),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("lacks the fw_cfg feature"), "{e}");
        assert!(choose(vec![cred("a", 10)], None, &no, Channel::Auto, &limits(4096)).is_ok());
    }

    #[test]
    fn a_name_on_both_channels_is_a_duplicate() {
        let e = choose(
            vec![cred("a", 10), cred("a", 5000)],
            None,
            &QEMU,
            Channel::Auto,
            &limits(4096),
        )
        .unwrap_err();
        assert!(
            matches!(e, ChannelError::Oem(OemError::Duplicate { .. })),
            "{e}"
        );
    }
}
