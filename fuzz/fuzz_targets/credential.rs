//! Credential name and value validation and the OEM string encoding (`credbridge::credentials`,
//! `credbridge::oem`).
//!
//! Input: byte 0 holds flags (bit 0: the channel carries plain UTF-8, as api delivery does;
//! bit 1: use the rest as a `--credential NAME[=GUEST]` argument too), byte 1 the name length,
//! then the name, then the value.
//!
//! Checked:
//! - name validation is exactly the rule restated here (systemd's, less `=`), for raw bytes
//!   and `&str`, and `--credential` parsing agrees with it;
//! - decoding the OEM string gives back the name and the value, byte for byte, the way a
//!   guest's systemd reads it (the first `=` ends the name);
//! - the plain form is used only when allowed and only for NUL-free UTF-8;
//! - the redacted form shows the size and never the value;
//! - `oem::validate` never panics, and a single string is refused only for a reason it states.
#![no_main]

use base64::Engine;
use credbridge::credentials::{self, Credential, Secret, SecretBytes, Selection};
use credbridge::oem::{self, BINARY_PREFIX, Form, Limits, OemString, Origin, PLAIN_PREFIX};
use libfuzzer_sys::fuzz_target;

/// systemd's `credential_name_valid()` as its documentation states it, less `=`, which the
/// guest reads as the end of the name (this target found that; see src/credentials.rs).
fn name_ok(name: &[u8]) -> bool {
    (1..=255).contains(&name.len())
        && name != b"."
        && name != b".."
        && name
            .iter()
            .all(|&b| (0x20..=0x7e).contains(&b) && !matches!(b, b'/' | b':' | b'='))
}

/// What the guest's PID 1 imports from one OEM string: (name, value).
fn guest_import(s: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (rest, binary) = match s.strip_prefix(BINARY_PREFIX.as_bytes()) {
        Some(r) => (r, true),
        None => (s.strip_prefix(PLAIN_PREFIX.as_bytes())?, false),
    };
    let eq = rest.iter().position(|&b| b == b'=')?;
    let (name, value) = (&rest[..eq], &rest[eq + 1..]);
    let value = if binary {
        base64::engine::general_purpose::STANDARD
            .decode(value)
            .ok()?
    } else {
        value.to_vec()
    };
    Some((name.to_vec(), value))
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Some((&name_len, rest)) = rest.split_first() else {
        return;
    };
    let plain_ok = flags & 1 != 0;
    let cut = (name_len as usize).min(rest.len());
    let (name, value) = rest.split_at(cut);

    let valid = credentials::validate_name_bytes(name);
    assert_eq!(valid.is_ok(), name_ok(name), "{name:?}: {valid:?}");
    if let Ok(s) = std::str::from_utf8(name) {
        assert_eq!(credentials::validate_name(s).is_ok(), valid.is_ok());
    }
    if flags & 2 != 0
        && let Ok(arg) = std::str::from_utf8(rest)
    {
        let sel = arg.parse::<Selection>();
        let (n, g) = arg.split_once('=').unwrap_or((arg, arg));
        assert_eq!(
            sel.is_ok(),
            name_ok(n.as_bytes()) && name_ok(g.as_bytes()),
            "--credential {arg:?}: {sel:?}"
        );
        if let Ok(sel) = sel {
            assert_eq!((sel.name.as_str(), sel.guest_name.as_str()), (n, g));
        }
    }
    if valid.is_err() {
        return;
    }

    let name = String::from_utf8(name.to_vec()).expect("valid names are ASCII");
    let cred = Credential {
        name: name.clone(),
        guest_name: name.clone(),
        value: Secret::new(SecretBytes::from_slice(value)),
    };
    let s = OemString::from_credential(&cred, plain_ok);
    let form = match &s.origin {
        Origin::Credential { name: n, form } => {
            assert_eq!(n, &name);
            *form
        }
        o => panic!("origin {o:?}"),
    };
    let plain_possible = plain_ok && !value.contains(&0) && std::str::from_utf8(value).is_ok();
    assert_eq!(form == Form::Plain, plain_possible, "form {form}");
    assert_eq!(s.guest_name.as_deref(), Some(name.as_str()));

    // The guest's reading of the string is the only one that matters.
    let (got_name, got_value) = guest_import(s.expose()).expect("the guest can parse it");
    assert_eq!(
        got_name,
        name.as_bytes(),
        "the guest would import {:?} as {:?}",
        name,
        String::from_utf8_lossy(&got_name)
    );
    assert_eq!(got_value, value, "value round trip");
    assert_eq!(
        oem::credential_name_of(s.expose()).as_deref(),
        Some(name.as_str())
    );
    if form == Form::Binary {
        assert!(!s.expose().contains(&0), "binary form has no NUL");
    }

    let red = s.redacted();
    let prefix = if form == Form::Plain {
        PLAIN_PREFIX
    } else {
        BINARY_PREFIX
    };
    let value_len = s.len() - prefix.len() - name.len() - 1;
    assert_eq!(red, format!("{prefix}{name}=<redacted {value_len} bytes>"));

    let limits = Limits {
        budget: 4096,
        strings_ceiling: oem::CH_STRINGS_CEILING,
        hypervisor: "cloud-hypervisor",
    };
    let one = [s];
    match oem::validate(&one, &limits) {
        Ok(()) => assert!(oem::entry_size(&one) <= 4096),
        Err(oem::OemError::Nul { .. }) => assert!(form == Form::Plain && value.contains(&0)),
        Err(oem::OemError::OverBudget { size, .. }) => assert!(size > 4096),
        Err(e) => panic!("one string refused for {e}"),
    }
});
