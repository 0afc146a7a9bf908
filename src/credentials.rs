//! Reading the unit's decrypted credentials from `$CREDENTIALS_DIRECTORY` into zeroizing memory,
//! under systemd's naming and size rules.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::sys::SecretPages;

/// systemd's per-credential and per-unit ceilings (`CREDENTIAL_SIZE_MAX`,
/// `CREDENTIALS_TOTAL_SIZE_MAX`); a guest's PID 1 applies the same total to what it imports.
pub const MAX_CREDENTIAL_SIZE: usize = 1024 * 1024;
pub const MAX_TOTAL_SIZE: usize = 1024 * 1024;
pub const MAX_NAME_LEN: usize = 255;

/// The one buffer type for bytes that are or contain a secret (credential values, OEM
/// strings, the `vm.create` body, `-smbios path=` contents): a fixed capacity in
/// [`SecretPages`] (kept out of core dumps, locked in RAM where the limit allows, zeroed and
/// unmapped on drop), and a length. It never reallocates, so it never leaves a copy behind: a
/// write past the capacity is a bug and panics. `Debug` shows only the length.
pub struct SecretBytes {
    pages: SecretPages,
    len: usize,
}

impl SecretBytes {
    pub fn with_capacity(capacity: usize) -> Self {
        SecretBytes {
            pages: SecretPages::new(capacity),
            len: 0,
        }
    }

    /// `len` zero bytes, to be filled in place.
    pub fn zeroed(len: usize) -> Self {
        let mut b = Self::with_capacity(len);
        b.len = len;
        b
    }

    pub fn from_slice(bytes: &[u8]) -> Self {
        let mut b = Self::with_capacity(bytes.len());
        b.extend_from_slice(bytes);
        b
    }

    pub fn capacity(&self) -> usize {
        self.pages.capacity()
    }

    /// Whether the pages are locked in RAM (mlock is best effort).
    pub fn is_locked(&self) -> bool {
        self.pages.is_locked()
    }

    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        assert!(
            end <= self.capacity(),
            "SecretBytes sized too small: {end} > {}",
            self.capacity()
        );
        self.pages.as_mut_prefix(end)[self.len..].copy_from_slice(bytes);
        self.len = end;
    }

    pub fn push(&mut self, byte: u8) {
        self.extend_from_slice(&[byte]);
    }

    /// Shortens to `len`, zeroing what is cut off.
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            zeroize::Zeroize::zeroize(&mut self.pages.as_mut_prefix(self.len)[len..]);
            self.len = len;
        }
    }

    /// Reads `file` to its end, up to `limit` bytes in all (at most the capacity); one byte
    /// more is read only to learn that there is more, which is `FileTooLarge`.
    fn read_up_to(&mut self, file: &mut impl Read, limit: usize) -> io::Result<()> {
        let limit = limit.min(self.capacity());
        loop {
            if self.len == limit {
                // Full: one more byte means the source is larger than was allowed for.
                let mut probe = [0u8; 1];
                return match file.read(&mut probe) {
                    Ok(0) => Ok(()),
                    Ok(_) => Err(io::Error::from(io::ErrorKind::FileTooLarge)),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => Err(e),
                };
            }
            match file.read(&mut self.pages.as_mut_prefix(limit)[self.len..]) {
                Ok(0) => return Ok(()),
                Ok(n) => self.len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Reads `file` into secret pages sized `max` (a file's fstat size, or a limit): never more
/// than `max` + 1 bytes, and `FileTooLarge` if there are more than `max`.
pub fn read_secret(file: &mut impl Read, max: usize) -> io::Result<SecretBytes> {
    let mut b = SecretBytes::with_capacity(max);
    b.read_up_to(file, max)?;
    Ok(b)
}

impl std::ops::Deref for SecretBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.pages.as_slice()[..self.len]
    }
}

impl std::ops::DerefMut for SecretBytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.pages.as_mut_prefix(self.len)
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} secret bytes>", self.len)
    }
}

/// Secret bytes. Zeroed on drop; `Debug` never shows them.
pub struct Secret(SecretBytes);

impl Secret {
    pub fn new(bytes: SecretBytes) -> Self {
        Secret(bytes)
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<secret: {} bytes>", self.0.len())
    }
}

#[derive(Debug)]
pub struct Credential {
    /// The name in the host's credentials directory.
    pub name: String,
    /// The name the guest will see.
    pub guest_name: String,
    pub value: Secret,
}

/// One `--credential NAME[=GUEST_NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub name: String,
    pub guest_name: String,
}

impl std::str::FromStr for Selection {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, guest) = s.split_once('=').unwrap_or((s, s));
        validate_name(name).map_err(|e| format!("credential name {name:?}: {e}"))?;
        validate_name(guest).map_err(|e| format!("guest name {guest:?}: {e}"))?;
        Ok(Selection {
            name: name.to_owned(),
            guest_name: guest.to_owned(),
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("is empty")]
    Empty,
    #[error("is {0} bytes long, the limit is {MAX_NAME_LEN}")]
    TooLong(usize),
    #[error("is `.` or `..`")]
    Dots,
    #[error("contains byte 0x{0:02x} at offset {1}; names are printable ASCII without `/` and `:`")]
    BadByte(u8, usize),
    #[error(
        "contains `=` at offset {0}; in an OEM string the first `=` ends the name, so the guest would import the credential under another name"
    )]
    Equals(usize),
}

/// systemd's `credential_name_valid()`: 1-255 bytes of printable ASCII, no `/` or `:`, not a
/// dot entry. The guest applies the same rule on import and silently skips what fails it, so
/// failing here is the only way the operator hears about it.
///
/// Plus no `=`, which systemd allows in a name but the OEM string cannot carry: the guest
/// splits `io.systemd.credential:NAME=VALUE` at the first `=` (systemd.md section 2), so
/// `a=b` would arrive as credential `a` with `b=` in front of its value. Every name checked
/// here becomes a guest name. Found by fuzz/fuzz_targets/credential.rs (issue #7).
pub fn validate_name(name: &str) -> Result<(), NameError> {
    validate_name_bytes(name.as_bytes())
}

pub fn validate_name_bytes(name: &[u8]) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    if name == b"." || name == b".." {
        return Err(NameError::Dots);
    }
    if let Some((i, &b)) = name
        .iter()
        .enumerate()
        .find(|&(_, &b)| !(0x20..=0x7e).contains(&b) || b == b'/' || b == b':')
    {
        return Err(NameError::BadByte(b, i));
    }
    if let Some(i) = name.iter().position(|&b| b == b'=') {
        return Err(NameError::Equals(i));
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(
        "no credentials directory: $CREDENTIALS_DIRECTORY is not set and --credentials-dir was not given\n\
         hint: run credbridge from a unit with LoadCredential=/LoadCredentialEncrypted=, or pass --credentials-dir DIR"
    )]
    NoDirectory,
    #[error("cannot read credentials directory {}: {source}", path.display())]
    ReadDirectory { path: PathBuf, source: io::Error },
    #[error("credential {name:?}: {what} is not allowed; each credential must be a regular file\nhint: remove it from {}", dir.display())]
    NotRegular {
        name: String,
        what: &'static str,
        dir: PathBuf,
    },
    #[error("credential file {name:?} in {}: invalid name: {source}\nhint: rename it; a name the guest can import is 1-255 printable ASCII bytes without `/`, `:` or `=`", dir.display())]
    BadFileName {
        name: String,
        dir: PathBuf,
        source: NameError,
    },
    #[error("credential {name:?}: cannot read it: {source}")]
    Read { name: String, source: io::Error },
    #[error(
        "credential {name:?} is {size} bytes, the limit is {MAX_CREDENTIAL_SIZE} bytes (1 MiB) per credential\nhint: systemd and the guest refuse larger credentials; store a smaller secret, or leave it out with --credential"
    )]
    TooLarge { name: String, size: u64 },
    #[error("credential {name:?} changed size while it was read: {expected} bytes when opened, {} when read\nhint: credentials must not change while the service starts; systemd's credentials directory is immutable, so check what writes to this one", if actual > expected { format!("more than {expected}") } else { actual.to_string() })]
    ChangedSize {
        name: String,
        expected: usize,
        actual: usize,
    },
    #[error("credential {name:?} was selected with --credential but is not in {}\nhint: add LoadCredential(Encrypted)={name}:... to the unit, or fix the --credential name", dir.display())]
    Missing { name: String, dir: PathBuf },
    #[error("credential {name:?} is selected twice with --credential")]
    SelectedTwice { name: String },
    #[error(
        "credential {name:?} brings the credentials' total to {total} bytes (names plus values, counted in the order they are passed); the limit is {MAX_TOTAL_SIZE} bytes (1 MiB)\nhint: pass fewer credentials with --credential NAME"
    )]
    TotalTooLarge { name: String, total: usize },
}

/// Loads the credentials: all of `dir` in name order, or exactly `selection` in the given order.
///
/// The total is checked by each file's size before the file is read, so no more than the limit
/// (and one spare byte per file) is ever read, however many or large the files are.
pub fn load(dir: &Path, selection: &[Selection]) -> Result<Vec<Credential>, CredentialError> {
    let mut creds = Vec::new();
    // A missing or unreadable directory is reported as such, not as a missing credential.
    if let Err(source) = std::fs::read_dir(dir) {
        return Err(CredentialError::ReadDirectory {
            path: dir.to_owned(),
            source,
        });
    }
    if selection.is_empty() {
        let mut names = Vec::new();
        let entries = std::fs::read_dir(dir).map_err(|source| CredentialError::ReadDirectory {
            path: dir.to_owned(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| CredentialError::ReadDirectory {
                path: dir.to_owned(),
                source,
            })?;
            let raw = entry.file_name();
            let bytes = raw.as_encoded_bytes();
            if let Err(source) = validate_name_bytes(bytes) {
                return Err(CredentialError::BadFileName {
                    name: raw.to_string_lossy().into_owned(),
                    dir: dir.to_owned(),
                    source,
                });
            }
            // validate_name_bytes guarantees ASCII.
            names.push(String::from_utf8_lossy(bytes).into_owned());
        }
        names.sort();
        let mut total = 0;
        for name in names {
            let value = read_one(dir, &name, &name, &mut total)?;
            creds.push(Credential {
                guest_name: name.clone(),
                name,
                value,
            });
        }
    } else {
        let mut total = 0;
        for (i, sel) in selection.iter().enumerate() {
            if selection[..i].iter().any(|s| s.name == sel.name) {
                return Err(CredentialError::SelectedTwice {
                    name: sel.name.clone(),
                });
            }
            let path = dir.join(&sel.name);
            if std::fs::symlink_metadata(&path).is_err_and(|e| e.kind() == io::ErrorKind::NotFound)
            {
                return Err(CredentialError::Missing {
                    name: sel.name.clone(),
                    dir: dir.to_owned(),
                });
            }
            let value = read_one(dir, &sel.name, &sel.guest_name, &mut total)?;
            creds.push(Credential {
                name: sel.name.clone(),
                guest_name: sel.guest_name.clone(),
                value,
            });
        }
    }
    Ok(creds)
}

fn kind_of(ft: &std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_symlink() {
        "a symlink"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device node"
    } else {
        "this file type"
    }
}

/// Reads one credential, adding its guest name and size to `total` first: systemd counts name
/// plus value against the unit's and the guest PID 1's total.
fn read_one(
    dir: &Path,
    name: &str,
    guest_name: &str,
    total: &mut usize,
) -> Result<Secret, CredentialError> {
    let path = dir.join(name);
    let read_err = |source| CredentialError::Read {
        name: name.to_owned(),
        source,
    };
    let not_regular = |what| CredentialError::NotRegular {
        name: name.to_owned(),
        what,
        dir: dir.to_owned(),
    };
    let meta = std::fs::symlink_metadata(&path).map_err(read_err)?;
    if !meta.file_type().is_file() {
        return Err(not_regular(kind_of(&meta.file_type())));
    }
    // O_NOFOLLOW and O_NONBLOCK close the race where the entry is swapped for a symlink or a FIFO
    // after the lstat above; fstat then confirms what we actually opened.
    let mut file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                not_regular("a symlink")
            } else {
                read_err(e)
            }
        })?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.file_type().is_file() {
        return Err(not_regular(kind_of(&meta.file_type())));
    }
    if meta.len() > MAX_CREDENTIAL_SIZE as u64 {
        return Err(CredentialError::TooLarge {
            name: name.to_owned(),
            size: meta.len(),
        });
    }
    let expected = meta.len() as usize;
    *total += guest_name.len() + expected;
    if *total > MAX_TOTAL_SIZE {
        return Err(CredentialError::TotalTooLarge {
            name: name.to_owned(),
            total: *total,
        });
    }
    // The buffer is sized once from fstat, so it never reallocates and leaves no copy behind;
    // reading past it detects a file that grew while we read it.
    let buf = read_secret(&mut file, expected).map_err(|e| {
        if e.kind() == io::ErrorKind::FileTooLarge {
            CredentialError::ChangedSize {
                name: name.to_owned(),
                expected,
                actual: expected + 1,
            }
        } else {
            read_err(e)
        }
    })?;
    if buf.len() != expected {
        return Err(CredentialError::ChangedSize {
            name: name.to_owned(),
            expected,
            actual: buf.len(),
        });
    }
    Ok(Secret::new(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dir_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (n, v) in files {
            std::fs::write(d.path().join(n), v).unwrap();
        }
        d
    }

    #[test]
    fn names_follow_systemd_rules_at_every_boundary() {
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert!(validate_name("a").is_ok());
        assert!(validate_name(&"a".repeat(254)).is_ok());
        assert!(validate_name(&"a".repeat(255)).is_ok());
        assert_eq!(
            validate_name(&"a".repeat(256)),
            Err(NameError::TooLong(256))
        );
        assert_eq!(validate_name("."), Err(NameError::Dots));
        assert_eq!(validate_name(".."), Err(NameError::Dots));
        assert!(validate_name("...").is_ok());
        assert!(validate_name(" ~").is_ok(), "0x20 and 0x7e are printable");
        for bad in [b'/', b':', 0x1f, 0x7f, 0x00, 0x80, 0xff, b'\n'] {
            let name = [b'x', bad];
            assert_eq!(validate_name_bytes(&name), Err(NameError::BadByte(bad, 1)));
        }
    }

    #[test]
    fn loads_all_in_name_order_with_exact_bytes() {
        let all: Vec<u8> = (0..=255).collect();
        let d = dir_with(&[("b", b"two"), ("a", &all), ("empty", b"")]);
        let creds = load(d.path(), &[]).unwrap();
        let names: Vec<_> = creds.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "empty"]);
        assert_eq!(creds[0].value.expose(), &all[..]);
        assert_eq!(creds[2].value.len(), 0);
    }

    #[test]
    fn selection_renames_and_orders() {
        let d = dir_with(&[("a", b"1"), ("b", b"2")]);
        let sel = vec!["b=guest-b".parse().unwrap(), "a".parse().unwrap()];
        let creds = load(d.path(), &sel).unwrap();
        assert_eq!(creds[0].name, "b");
        assert_eq!(creds[0].guest_name, "guest-b");
        assert_eq!(creds[1].guest_name, "a");
        let missing = load(d.path(), &["c".parse().unwrap()]).unwrap_err();
        assert!(matches!(missing, CredentialError::Missing { .. }));
        assert!(missing.to_string().contains("\"c\""));
        let twice = load(d.path(), &["a".parse().unwrap(), "a=x".parse().unwrap()]);
        assert!(matches!(twice, Err(CredentialError::SelectedTwice { .. })));
    }

    #[test]
    fn selection_parsing_validates_both_names() {
        assert!("a:b".parse::<Selection>().is_err());
        assert!("a=b/c".parse::<Selection>().is_err());
        // Only the first `=` splits NAME from GUEST_NAME; another one in the guest name would
        // be split again by the guest (issue #7).
        let e = "a=b=c".parse::<Selection>().unwrap_err();
        assert!(
            e.contains("guest name \"b=c\"") && e.contains("`=` at offset 1"),
            "{e}"
        );
    }

    #[test]
    fn equals_in_a_name_is_refused_because_the_guest_splits_there() {
        // Regression (issue #7, found by fuzz/fuzz_targets/credential.rs): a file `a=b` was
        // delivered as `io.systemd.credential:a=b=VALUE`, which the guest imports as `a`.
        assert_eq!(validate_name("a=b"), Err(NameError::Equals(1)));
        assert_eq!(validate_name("="), Err(NameError::Equals(0)));
        assert_eq!(validate_name("ab="), Err(NameError::Equals(2)));
        let d = dir_with(&[("a=b", b"value")]);
        let e = load(d.path(), &[]).unwrap_err();
        assert!(matches!(
            e,
            CredentialError::BadFileName {
                source: NameError::Equals(1),
                ..
            }
        ));
        assert!(e.to_string().contains("`:` or `=`"), "{e}");
    }

    #[test]
    fn rejects_non_regular_entries_by_name() {
        let d = dir_with(&[("ok", b"1")]);
        std::fs::create_dir(d.path().join("sub")).unwrap();
        let e = load(d.path(), &[]).unwrap_err().to_string();
        assert!(e.contains("\"sub\"") && e.contains("a directory"), "{e}");

        let d = dir_with(&[("ok", b"1")]);
        std::os::unix::fs::symlink(d.path().join("ok"), d.path().join("link")).unwrap();
        let e = load(d.path(), &[]).unwrap_err().to_string();
        assert!(e.contains("\"link\"") && e.contains("a symlink"), "{e}");

        let d = dir_with(&[]);
        nix::unistd::mkfifo(&d.path().join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = load(d.path(), &[]).unwrap_err().to_string();
        assert!(e.contains("\"fifo\"") && e.contains("a FIFO"), "{e}");

        let d = dir_with(&[]);
        let _l = std::os::unix::net::UnixListener::bind(d.path().join("sock")).unwrap();
        let e = load(d.path(), &[]).unwrap_err().to_string();
        assert!(e.contains("\"sock\"") && e.contains("a socket"), "{e}");
    }

    #[test]
    fn rejects_bad_file_names() {
        let d = dir_with(&[("with:colon", b"1")]);
        let e = load(d.path(), &[]).unwrap_err().to_string();
        assert!(e.contains("with:colon") && e.contains("0x3a"), "{e}");
    }

    #[test]
    fn unreadable_entry_is_named() {
        if nix::unistd::geteuid().is_root() {
            // root reads through mode 000; the integration tests cover this as a non-root user.
            return;
        }
        let d = dir_with(&[("locked", b"1")]);
        std::fs::set_permissions(d.path().join("locked"), PermissionsExt::from_mode(0o000))
            .unwrap();
        let e = load(d.path(), &[]).unwrap_err().to_string();
        assert!(e.contains("\"locked\""), "{e}");
    }

    #[test]
    fn per_credential_limit_at_below_and_above() {
        // A one-byte name: below the value limit the whole fits the total exactly.
        let d = dir_with(&[("a", &vec![b'x'; MAX_CREDENTIAL_SIZE - 1])]);
        assert_eq!(
            load(d.path(), &[]).unwrap()[0].value.len(),
            MAX_CREDENTIAL_SIZE - 1
        );
        // At the value limit the value passes its own check, but name + value is over the total.
        let d = dir_with(&[("a", &vec![b'x'; MAX_CREDENTIAL_SIZE])]);
        let e = load(d.path(), &[]).unwrap_err();
        assert!(
            matches!(e, CredentialError::TotalTooLarge { total, .. } if total == MAX_CREDENTIAL_SIZE + 1)
        );
        let d = dir_with(&[("a", &vec![b'x'; MAX_CREDENTIAL_SIZE + 1])]);
        let e = load(d.path(), &[]).unwrap_err();
        assert!(
            matches!(e, CredentialError::TooLarge { size, .. } if size == MAX_CREDENTIAL_SIZE as u64 + 1)
        );
        let text = e.to_string();
        assert!(
            text.contains("\"a\"") && text.contains("1048576") && text.contains("1048577"),
            "{text}"
        );
    }

    #[test]
    fn total_limit_at_below_and_above() {
        // Two credentials "a" and "b": total = 2 + len(a) + len(b).
        let half = MAX_TOTAL_SIZE / 2 - 1;
        let d = dir_with(&[("a", &vec![1u8; half]), ("b", &vec![2u8; half])]);
        assert!(load(d.path(), &[]).is_ok(), "exactly at the total");
        let d = dir_with(&[("a", &vec![1u8; half]), ("b", &vec![2u8; half + 1])]);
        let e = load(d.path(), &[]).unwrap_err();
        assert!(
            matches!(e, CredentialError::TotalTooLarge { total, .. } if total == MAX_TOTAL_SIZE + 1)
        );
        let d = dir_with(&[("a", &vec![1u8; half]), ("b", &vec![2u8; half - 1])]);
        assert!(load(d.path(), &[]).is_ok());
    }

    /// Bytes this thread has read with read(2) and friends (proc(5), /proc/PID/io `rchar`).
    fn thread_rchar() -> u64 {
        let io = std::fs::read_to_string("/proc/thread-self/io").unwrap();
        io.lines()
            .find_map(|l| l.strip_prefix("rchar: "))
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn the_total_is_checked_by_size_before_anything_over_it_is_read() {
        // Regression (#11): every file was read before the 1 MiB total was checked, so 2000
        // files of 1 MiB took 2 GB. Four files of nearly 1 MiB each: only the first may be read.
        let big = vec![b'x'; MAX_CREDENTIAL_SIZE - 16];
        let d = dir_with(&[("a", &big), ("b", &big), ("c", &big), ("d", &big)]);
        let before = thread_rchar();
        let e = load(d.path(), &[]).unwrap_err();
        let read = thread_rchar() - before;
        assert!(
            read <= (MAX_TOTAL_SIZE + 4096) as u64,
            "read {read} bytes for a limit of {MAX_TOTAL_SIZE}"
        );
        assert!(
            matches!(&e, CredentialError::TotalTooLarge { name, total } if name == "b" && *total == 2 * (big.len() + 1)),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.starts_with("credential \"b\" brings the credentials' total")
                && text.contains("the limit is 1048576 bytes (1 MiB)")
                && text.contains("hint: pass fewer credentials with --credential NAME"),
            "{text}"
        );
        // The same with a selection, in the selection's order.
        let sel = ["d".parse().unwrap(), "a".parse().unwrap()];
        let e = load(d.path(), &sel).unwrap_err();
        assert!(
            matches!(&e, CredentialError::TotalTooLarge { name, .. } if name == "a"),
            "{e:?}"
        );
    }

    #[test]
    fn secret_bytes_never_grow_and_reads_are_bounded() {
        let mut b = SecretBytes::with_capacity(5);
        b.extend_from_slice(b"abc");
        b.push(b'd');
        assert_eq!(&b[..], b"abcd");
        b.truncate(1);
        assert_eq!(&b[..], b"a");
        assert_eq!(format!("{b:?}"), "<1 secret bytes>");
        let over = std::panic::catch_unwind(|| {
            let mut b = SecretBytes::with_capacity(2);
            b.extend_from_slice(&vec![0u8; b.capacity() + 1]);
        });
        assert!(
            over.is_err(),
            "a write past the capacity is refused, not reallocated"
        );

        // read_secret reads at most max + 1 bytes, even from an endless source.
        let mut zero = std::fs::File::open("/dev/zero").unwrap();
        let e = read_secret(&mut zero, 10).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);
        let got = read_secret(&mut &b"0123456789"[..], 10).unwrap();
        assert_eq!(&got[..], b"0123456789");
        let short = read_secret(&mut &b"0123"[..], 10).unwrap();
        assert_eq!(&short[..], b"0123");
    }

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new(SecretBytes::from_slice(b"hunter2"));
        assert_eq!(format!("{s:?}"), "<secret: 7 bytes>");
    }
}
