//! cloud-hypervisor's option-string grammar (`key=value,...`) and its value families (Toggle,
//! ByteSized, IntegerList, TupleList, StringList), read the way CH 54's `option_parser` reads them.
//!
//! The quirks are deliberate: keys are not trimmed, values are; a repeated key wins last; an empty
//! value counts as "not given"; scalars are dequoted but lists are not. Getting any of these wrong
//! changes the VM that CH would build, so each is pinned by a table test below.

use std::str::FromStr;

/// A list may expand ranges (`[0-1000000]`); CH would allocate whatever is asked. We stop at this
/// many elements so that no input can exhaust memory; no sane VM config comes near it.
pub const MAX_LIST_LEN: usize = 1 << 20;

/// Why an option string was refused. Values are never echoed: the `--platform` string may carry
/// credentials, and the key name is enough to find the mistake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrammarError {
    #[error("invalid syntax (unbalanced `\"` or `[`/`]`, or a key without `=`)")]
    Syntax,
    #[error("unknown key `{0}`")]
    UnknownKey(String),
    #[error("invalid value for `{key}`: expected {expected}")]
    Value { key: String, expected: &'static str },
}

/// Splits on `,` outside `"..."` and `[...]`, after trimming the whole string. Elements keep their
/// inner whitespace. `None` on unbalanced quotes or brackets, or a `]` with nothing open.
pub fn split_commas(s: &str) -> Option<Vec<String>> {
    let mut list = Vec::new();
    let mut depth: usize = 0;
    let mut quoted = false;
    let mut current = String::new();
    for c in s.trim().chars() {
        match c {
            '"' => quoted = !quoted,
            _ if quoted => {}
            '[' => depth = depth.saturating_add(1),
            ']' => depth = depth.checked_sub(1)?,
            ',' if depth == 0 => {
                list.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    list.push(current);
    if quoted || depth != 0 {
        return None;
    }
    Some(list)
}

/// Removes quote characters the way CH does: every `"` toggles quoting and is dropped, except
/// that `""` outside quotes yields one literal `"`.
pub fn dequote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev = '\0';
    let mut quoted = false;
    for c in s.chars() {
        if c == '"' {
            if prev == '"' && !quoted {
                out.push('"');
            }
            quoted = !quoted;
        } else {
            out.push(c);
        }
        prev = c;
    }
    out
}

/// `on|off|true|false`, any case. (The empty string also means false, but an empty value never
/// reaches a conversion: it counts as "not given".)
pub fn parse_toggle(s: &str) -> Option<bool> {
    match s.to_lowercase().as_str() {
        "" | "off" | "false" => Some(false),
        "on" | "true" => Some(true),
        _ => None,
    }
}

/// An integer with an optional upper-case binary suffix. CH strips *every* trailing `K`/`M`/`G`
/// but shifts by the last one only (`1KM` is 1 MiB), and lets high bits fall off the left.
pub fn parse_byte_sized(s: &str) -> Option<u64> {
    let s = s.trim();
    let shift = match s.chars().last() {
        Some('K') => 10,
        Some('M') => 20,
        Some('G') => 30,
        _ => 0,
    };
    let digits = s.trim_end_matches(['K', 'M', 'G']);
    let value: u64 = digits.parse().ok()?;
    Some(value.wrapping_shl(shift))
}

/// `[a,b-c,...]`: all outer brackets stripped, plain `,` split (no quoting), inclusive ranges with
/// start < end, each element range-checked into `T`.
pub fn parse_integer_list<T: TryFrom<u64>>(s: &str) -> Option<Vec<T>> {
    let body = s.trim().trim_matches(['[', ']']);
    let mut list = Vec::new();
    for range in body.split(',') {
        let mut parts = range.split('-');
        let start: u64 = parts.next()?.parse().ok()?;
        let end: u64 = match parts.next() {
            Some(end) => {
                let end: u64 = end.parse().ok()?;
                if start >= end {
                    return None;
                }
                end
            }
            None => start,
        };
        if parts.next().is_some() {
            return None;
        }
        let len = usize::try_from(end - start).ok()?;
        if len >= MAX_LIST_LEN.saturating_sub(list.len()) {
            return None;
        }
        for value in start..=end {
            list.push(T::try_from(value).ok()?);
        }
    }
    Some(list)
}

/// `[k@v,...]`: exactly one pair of outer brackets, elements split like options, each split on
/// its single unquoted `@`. The key is dequoted and parsed; the value goes to `value` untouched.
pub fn parse_tuple_list<K: FromStr, V>(
    s: &str,
    value: impl Fn(&str) -> Option<V>,
) -> Option<Vec<(K, V)>> {
    let body = s.trim().strip_prefix('[')?.strip_suffix(']')?;
    let mut list = Vec::new();
    for element in split_commas(body)? {
        let element = element.trim();
        let mut quoted = false;
        let mut at = None;
        for (idx, c) in element.char_indices() {
            match c {
                '"' => quoted = !quoted,
                '@' if !quoted => {
                    if at.is_some() || idx == 0 {
                        return None;
                    }
                    at = Some(idx);
                }
                _ => {}
            }
        }
        let at = at?;
        let key = dequote(element.get(..at)?).parse().ok()?;
        let val = value(element.get(at + 1..)?)?;
        list.push((key, val));
    }
    Some(list)
}

/// `[a,b,...]`: all outer brackets stripped, then split like options. Elements are *not*
/// dequoted or trimmed, so `["a,b"]` keeps its quotes and `[]` is one empty string.
pub fn parse_string_list(s: &str) -> Option<Vec<String>> {
    split_commas(s.trim().trim_matches(['[', ']']))
}

/// The parsed `key=value` pairs of one option string, for a fixed set of keys.
#[derive(Debug, Clone)]
pub struct Options {
    slots: Vec<Slot>,
}

#[derive(Debug, Clone)]
struct Slot {
    key: &'static str,
    valueless: bool,
    value: Option<String>,
}

impl Options {
    /// Keys that need `=value`.
    pub fn new(keys: &[&'static str]) -> Self {
        let slots = keys
            .iter()
            .map(|key| Slot {
                key,
                valueless: false,
                value: None,
            })
            .collect();
        Self { slots }
    }

    /// Keys that are flags (`tty`); any `=value` after them is ignored, as CH does.
    pub fn with_valueless(mut self, keys: &[&'static str]) -> Self {
        self.slots.extend(keys.iter().map(|key| Slot {
            key,
            valueless: true,
            value: None,
        }));
        self
    }

    /// Reads `input` into the slots. Like CH, slots filled before an error stay filled
    /// (`--api-socket` relies on that).
    pub fn parse(&mut self, input: &str) -> Result<(), GrammarError> {
        self.parse_inner(input, false)
    }

    /// Like [`Options::parse`], but unknown keys are skipped.
    pub fn parse_subset(&mut self, input: &str) -> Result<(), GrammarError> {
        self.parse_inner(input, true)
    }

    fn parse_inner(&mut self, input: &str, ignore_unknown: bool) -> Result<(), GrammarError> {
        if input.trim().is_empty() {
            return Ok(());
        }
        for item in split_commas(input).ok_or(GrammarError::Syntax)? {
            let (key, value) = match item.split_once('=') {
                Some((key, value)) => (key, Some(value)),
                None => (item.as_str(), None),
            };
            let Some(slot) = self.slots.iter_mut().find(|slot| slot.key == key) else {
                if ignore_unknown {
                    continue;
                }
                return Err(GrammarError::UnknownKey(key.to_owned()));
            };
            if slot.valueless {
                slot.value = Some(String::new());
            } else {
                let value = value.ok_or(GrammarError::Syntax)?;
                slot.value = Some(value.trim().to_owned());
            }
        }
        Ok(())
    }

    /// The stored value, even when empty.
    pub fn raw(&self, key: &str) -> Option<&str> {
        self.slots
            .iter()
            .find(|slot| slot.key == key)
            .and_then(|slot| slot.value.as_deref())
    }

    /// The value, with "given but empty" folded into "not given".
    fn nonempty(&self, key: &str) -> Option<&str> {
        self.raw(key).filter(|v| !v.is_empty())
    }

    pub fn is_set(&self, key: &str) -> bool {
        self.raw(key).is_some()
    }

    /// A string value, dequoted.
    pub fn get(&self, key: &str) -> Option<String> {
        self.nonempty(key).map(dequote)
    }

    fn convert<T>(
        &self,
        key: &str,
        expected: &'static str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>, GrammarError> {
        match self.nonempty(key) {
            None => Ok(None),
            Some(v) => parse(v).map(Some).ok_or_else(|| GrammarError::Value {
                key: key.to_owned(),
                expected,
            }),
        }
    }

    /// A scalar parsed with `FromStr` after dequoting (integers, addresses, enums).
    pub fn scalar<T: FromStr>(
        &self,
        key: &str,
        expected: &'static str,
    ) -> Result<Option<T>, GrammarError> {
        self.convert(key, expected, |v| dequote(v).parse().ok())
    }

    /// A scalar read by a custom parser after dequoting.
    pub fn scalar_with<T>(
        &self,
        key: &str,
        expected: &'static str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>, GrammarError> {
        self.convert(key, expected, |v| parse(&dequote(v)))
    }

    pub fn toggle(&self, key: &str) -> Result<Option<bool>, GrammarError> {
        self.convert(key, "on|off|true|false", parse_toggle)
    }

    pub fn byte_sized(&self, key: &str) -> Result<Option<u64>, GrammarError> {
        self.convert(key, "an integer with an optional K, M or G suffix", |v| {
            parse_byte_sized(&dequote(v))
        })
    }

    pub fn integer_list<T: TryFrom<u64>>(&self, key: &str) -> Result<Option<Vec<T>>, GrammarError> {
        self.convert(
            key,
            "a list like [0,2-4] of integers in range",
            parse_integer_list,
        )
    }

    pub fn tuple_list<K: FromStr, V>(
        &self,
        key: &str,
        value: impl Fn(&str) -> Option<V>,
    ) -> Result<Option<Vec<(K, V)>>, GrammarError> {
        self.convert(key, "a list like [key@value,...]", |v| {
            parse_tuple_list(v, value)
        })
    }

    pub fn string_list(&self, key: &str) -> Result<Option<Vec<String>>, GrammarError> {
        self.convert(key, "a list like [a,b]", parse_string_list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(keys: &[&'static str], input: &str) -> Result<Options, GrammarError> {
        let mut options = Options::new(keys);
        options.parse(input).map(|()| options)
    }

    #[test]
    fn option_string_structure() {
        let keys = &["boot", "max", "path", "list"];
        type Pairs<'a> = &'a [(&'a str, Option<&'a str>)];
        let table: &[(&str, Result<Pairs, GrammarError>)] = &[
            (
                "boot=2,max=4",
                Ok(&[("boot", Some("2")), ("max", Some("4"))]),
            ),
            // The whole string is trimmed, and so is each value, but not each key.
            (
                "  boot= 2 ,max=4  ",
                Ok(&[("boot", Some("2")), ("max", Some("4"))]),
            ),
            (
                "boot=2, max=4",
                Err(GrammarError::UnknownKey(" max".into())),
            ),
            // A trailing comma makes an empty key.
            ("boot=2,", Err(GrammarError::UnknownKey(String::new()))),
            // A repeated key silently wins last.
            ("boot=1,boot=3", Ok(&[("boot", Some("3"))])),
            // `=` inside a value is kept.
            ("path=a=b=c", Ok(&[("path", Some("a=b=c"))])),
            // Commas inside quotes and brackets do not split.
            (
                "path=\"a,b\",list=[1,2]",
                Ok(&[("path", Some("\"a,b\"")), ("list", Some("[1,2]"))]),
            ),
            ("boot", Err(GrammarError::Syntax)),
            ("path=\"a", Err(GrammarError::Syntax)),
            ("path=a]", Err(GrammarError::Syntax)),
            ("list=[1", Err(GrammarError::Syntax)),
            ("", Ok(&[("boot", None)])),
            ("   ", Ok(&[("boot", None)])),
            ("boot=", Ok(&[("boot", Some(""))])),
        ];
        for (input, want) in table {
            match (parsed(keys, input), want) {
                (Ok(options), Ok(pairs)) => {
                    for (key, value) in *pairs {
                        assert_eq!(options.raw(key), *value, "{input:?} key {key}");
                    }
                }
                (Err(got), Err(want)) => assert_eq!(&got, want, "{input:?}"),
                (got, want) => panic!("{input:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn empty_value_counts_as_not_given() {
        let options = parsed(&["size", "name"], "size=,name=").unwrap();
        assert!(options.is_set("size"));
        assert_eq!(options.byte_sized("size"), Ok(None));
        assert_eq!(options.get("name"), None);
    }

    #[test]
    fn valueless_keys_ignore_values() {
        let mut options = Options::new(&["file"]).with_valueless(&["tty", "off"]);
        options.parse("tty,off=whatever").unwrap();
        assert!(options.is_set("tty") && options.is_set("off"));
        assert_eq!(options.raw("off"), Some(""));
    }

    #[test]
    fn scalars_are_dequoted() {
        let table = [
            ("\"a,b\"", "a,b"),
            ("plain", "plain"),
            ("a\"\"b", "ab"),
            ("\"a\"\"\"", "a\""),
            ("\"x\"\"y\"", "x\"y"),
            ("\"\"", ""),
        ];
        for (input, want) in table {
            assert_eq!(dequote(input), want, "{input:?}");
        }
    }

    #[test]
    fn toggle_family() {
        let table = [
            ("on", Some(true)),
            ("ON", Some(true)),
            ("True", Some(true)),
            ("off", Some(false)),
            ("FALSE", Some(false)),
            ("yes", None),
            ("1", None),
            ("\"on\"", None),
        ];
        for (input, want) in table {
            assert_eq!(parse_toggle(input), want, "{input:?}");
        }
    }

    #[test]
    fn byte_sized_family() {
        let table = [
            ("0", Some(0)),
            ("512M", Some(512 << 20)),
            ("1G", Some(1 << 30)),
            ("786432K", Some(786_432 << 10)),
            (" 2G ", Some(2 << 30)),
            ("+4", Some(4)),
            ("1KM", Some(1 << 20)),
            ("1g", None),
            ("1.5G", None),
            ("G", None),
            ("-1", None),
            ("18446744073709551615", Some(u64::MAX)),
            // High bits fall off, as CH's `<<` does.
            ("18446744073709551615K", Some(u64::MAX << 10)),
            ("18446744073709551616", None),
        ];
        for (input, want) in table {
            assert_eq!(parse_byte_sized(input), want, "{input:?}");
        }
    }

    #[test]
    fn integer_list_family() {
        let table: &[(&str, Option<&[u64]>)] = &[
            ("[1,2]", Some(&[1, 2])),
            ("[0-3]", Some(&[0, 1, 2, 3])),
            ("[0,2-4,9]", Some(&[0, 2, 3, 4, 9])),
            ("5", Some(&[5])),
            ("[[7]]", Some(&[7])),
            ("[3-1]", None),
            ("[3-3]", None),
            ("[1-2-3]", None),
            ("[]", None),
            ("[1, 2]", None),
            ("[a]", None),
            ("[-1]", None),
            ("[0-18446744073709551615]", None),
        ];
        for (input, want) in table {
            assert_eq!(
                parse_integer_list::<u64>(input).as_deref(),
                *want,
                "{input:?}"
            );
        }
        assert_eq!(parse_integer_list::<u16>("[65535]"), Some(vec![65535u16]));
        assert_eq!(parse_integer_list::<u16>("[65536]"), None);
        let at_limit = format!("[0-{}]", MAX_LIST_LEN - 1);
        assert_eq!(
            parse_integer_list::<u64>(&at_limit).map(|v| v.len()),
            Some(MAX_LIST_LEN)
        );
        let over_limit = format!("[0-{}]", MAX_LIST_LEN);
        assert_eq!(parse_integer_list::<u64>(&over_limit), None);
    }

    #[test]
    fn tuple_list_family() {
        type Pairs = Vec<(u32, Vec<usize>)>;
        let cpus = |s: &str| parse_integer_list::<usize>(s);
        let table: &[(&str, Option<Pairs>)] = &[
            (
                "[0@[0,2],1@[1,3-5]]",
                Some(vec![(0, vec![0, 2]), (1, vec![1, 3, 4, 5])]),
            ),
            ("[ 0@[1] ]", Some(vec![(0, vec![1])])),
            ("[\"1\"@[2]]", Some(vec![(1, vec![2])])),
            ("0@[1]", None),
            ("[[0@[1]]]", None),
            ("[@[1]]", None),
            ("[0@1@[2]]", None),
            ("[0]", None),
            ("[x@[1]]", None),
            ("[0@[1]", None),
        ];
        for (input, want) in table {
            assert_eq!(&parse_tuple_list::<u32, _>(input, cpus), want, "{input:?}");
        }
        let plain = |s: &str| s.parse::<u64>().ok();
        assert_eq!(
            parse_tuple_list::<u64, _>("[1@300,2@20]", plain),
            Some(vec![(1, 300), (2, 20)])
        );
        assert_eq!(parse_tuple_list::<u64, _>("[1@ 3]", plain), None);
        assert_eq!(
            parse_tuple_list::<String, _>("[net0@7]", plain),
            Some(vec![("net0".to_owned(), 7)])
        );
    }

    #[test]
    fn string_list_family() {
        let table: &[(&str, Option<&[&str]>)] = &[
            ("[a,b]", Some(&["a", "b"])),
            ("a", Some(&["a"])),
            ("[\"a,b\",c]", Some(&["\"a,b\"", "c"])),
            ("[ a , b ]", Some(&["a ", " b"])),
            ("[a,,b]", Some(&["a", "", "b"])),
            ("[]", Some(&[""])),
            ("[x,[y,z],w]", Some(&["x", "[y,z]", "w"])),
            ("[a=b=c,d]", Some(&["a=b=c", "d"])),
            ("[[x],y]", None),
            ("[a\"b]", None),
            ("[a\tb]", Some(&["a\tb"])),
        ];
        for (input, want) in table {
            let got = parse_string_list(input);
            let got: Option<Vec<&str>> =
                got.as_ref().map(|v| v.iter().map(String::as_str).collect());
            assert_eq!(got.as_deref(), *want, "{input:?}");
        }
    }

    #[test]
    fn partial_parse_keeps_earlier_keys() {
        let mut options = Options::new(&["path", "fd"]);
        assert!(options.parse("fd=3,bogus=1").is_err());
        assert_eq!(options.raw("fd"), Some("3"));
    }
}
