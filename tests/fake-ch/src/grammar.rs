//! cloud-hypervisor's `key=value,...` option grammar (`option_parser/src/lib.rs` at ae44c297),
//! re-implemented rule for rule: trim, split on `,` outside `"..."` and `[...]`, split each item
//! on its first `=`, values trimmed (keys are not), unknown key is an error, a repeated key wins
//! last, an empty value counts as "not given". Scalars are de-quoted; `StringList` is not and
//! strips every leading `[` and trailing `]`.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// `OptionParserError` with the same `Display` texts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptError {
    UnknownOption(String),
    InvalidSyntax(String),
    Conversion(String, String),
}

impl fmt::Display for OptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptError::UnknownOption(k) => write!(f, "Unknown option: {k}"),
            OptError::InvalidSyntax(s) => write!(f, "Invalid syntax: {s}"),
            OptError::Conversion(k, v) => write!(f, "Unable to convert {v} for {k}"),
        }
    }
}

impl OptError {
    /// The variant as CH's `{:?}` prints it, for the "Fatal error" log line.
    pub fn debug_name(&self) -> String {
        match self {
            OptError::UnknownOption(k) => format!("UnknownOption({k:?})"),
            OptError::InvalidSyntax(s) => format!("InvalidSyntax({s:?})"),
            OptError::Conversion(k, v) => format!("Conversion({k:?}, {v:?})"),
        }
    }
}

/// `split_commas`: the whole input is trimmed; `"` toggles quoting and is kept; `]` without an
/// open `[` (outside quotes) is a syntax error, as are unbalanced quotes or brackets at the end.
pub fn split_commas(s: &str) -> Result<Vec<String>, OptError> {
    let mut list = Vec::new();
    let mut opened_brackets = 0u64;
    let mut in_quotes = false;
    let mut current = String::new();
    for c in s.trim().chars() {
        match c {
            '"' => in_quotes = !in_quotes,
            _ if in_quotes => {}
            '[' => opened_brackets += 1,
            ']' => {
                if opened_brackets < 1 {
                    return Err(OptError::InvalidSyntax(s.to_owned()));
                }
                opened_brackets -= 1;
            }
            ',' if opened_brackets == 0 => {
                list.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    list.push(current);
    if in_quotes || opened_brackets != 0 {
        return Err(OptError::InvalidSyntax(s.to_owned()));
    }
    Ok(list)
}

/// `dequote`: drops every `"`; a `""` pair outside quotes yields one literal `"`.
pub fn dequote(s: &str) -> String {
    let mut prev = '\0';
    let mut in_quotes = false;
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '"' {
            if prev == '"' && !in_quotes {
                out.push('"');
            }
            in_quotes = !in_quotes;
        } else {
            out.push(c);
        }
        prev = c;
    }
    out
}

/// An `OptionParser` whose options all require a value (the only kind the fake needs).
#[derive(Debug, Default)]
pub struct OptionParser {
    options: HashMap<String, Option<String>>,
}

impl OptionParser {
    pub fn new(keys: &[&str]) -> Self {
        Self {
            options: keys.iter().map(|k| ((*k).to_owned(), None)).collect(),
        }
    }

    /// Values set before an error stay set, as in CH (which `--api-socket` relies on when it
    /// ignores the error).
    pub fn parse(&mut self, input: &str) -> Result<(), OptError> {
        if input.trim().is_empty() {
            return Ok(());
        }
        for option in split_commas(input)? {
            let (key, value) = match option.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (option.as_str(), None),
            };
            match self.options.get_mut(key) {
                None => return Err(OptError::UnknownOption(key.to_owned())),
                Some(slot) => match value {
                    Some(v) => *slot = Some(v.trim().to_owned()),
                    None => return Err(OptError::InvalidSyntax(option.clone())),
                },
            }
        }
        Ok(())
    }

    /// The raw (not de-quoted) value, `None` when absent or empty.
    pub fn raw(&self, key: &str) -> Option<&str> {
        self.options
            .get(key)
            .and_then(|v| v.as_deref())
            .filter(|v| !v.is_empty())
    }

    pub fn is_set(&self, key: &str) -> bool {
        self.options.get(key).is_some_and(|v| v.is_some())
    }

    /// `get`: de-quoted value, `None` when absent or empty.
    pub fn get(&self, key: &str) -> Option<String> {
        self.raw(key).map(dequote)
    }

    /// `convert::<T: FromStr>`: de-quote then parse.
    pub fn convert<T: FromStr>(&self, key: &str) -> Result<Option<T>, OptError> {
        match self.raw(key) {
            None => Ok(None),
            Some(v) => dequote(v)
                .parse()
                .map(Some)
                .map_err(|_| OptError::Conversion(key.to_owned(), v.to_owned())),
        }
    }

    /// `convert::<Toggle>`: on|off|true|false, case-insensitive.
    pub fn toggle(&self, key: &str) -> Result<Option<bool>, OptError> {
        match self.raw(key) {
            None => Ok(None),
            Some(v) => match v.to_lowercase().as_str() {
                "on" | "true" => Ok(Some(true)),
                "off" | "false" => Ok(Some(false)),
                _ => Err(OptError::Conversion(key.to_owned(), v.to_owned())),
            },
        }
    }

    /// `convert::<IntegerList>` (u64 elements, inclusive ranges, `a-b` needs a < b).
    pub fn integer_list(&self, key: &str) -> Result<Option<Vec<u64>>, OptError> {
        match self.raw(key) {
            None => Ok(None),
            Some(v) => integer_list(v)
                .map(Some)
                .ok_or_else(|| OptError::Conversion(key.to_owned(), v.to_owned())),
        }
    }

    /// `convert::<StringList>`: not de-quoted, all outer brackets stripped, split again.
    pub fn string_list(&self, key: &str) -> Result<Option<Vec<String>>, OptError> {
        match self.raw(key) {
            None => Ok(None),
            Some(v) => split_commas(v.trim().trim_matches(['[', ']']))
                .map(Some)
                .map_err(|_| OptError::Conversion(key.to_owned(), v.to_owned())),
        }
    }
}

fn integer_list(s: &str) -> Option<Vec<u64>> {
    let mut out = Vec::new();
    for range in s.trim().trim_matches(['[', ']']).split(',') {
        let items: Vec<&str> = range.split('-').collect();
        if items.len() > 2 {
            return None;
        }
        let start: u64 = items[0].parse().ok()?;
        let end = if items.len() == 2 {
            let end: u64 = items[1].parse().ok()?;
            if start >= end {
                return None;
            }
            end
        } else {
            start
        };
        out.extend(start..=end);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oem(v: &str) -> Result<Option<Vec<String>>, OptError> {
        let mut p = OptionParser::new(&["oem_strings"]);
        p.parse(v)?;
        p.string_list("oem_strings")
    }

    #[test]
    fn reference_table() {
        let s = |v: &[&str]| Ok(Some(v.iter().map(|s| s.to_string()).collect()));
        assert_eq!(oem("oem_strings=[a,b]"), s(&["a", "b"]));
        assert_eq!(oem("oem_strings=[\"a,b\",c]"), s(&["\"a,b\"", "c"]));
        assert!(matches!(
            oem("oem_strings=[a\"b]"),
            Err(OptError::InvalidSyntax(_))
        ));
        assert_eq!(oem("oem_strings=[ a , b ]"), s(&["a ", " b"]));
        assert_eq!(oem("oem_strings=[a,,b]"), s(&["a", "", "b"]));
        assert_eq!(oem("oem_strings=[]"), s(&[""]));
        assert_eq!(oem("oem_strings=[x,[y,z],w]"), s(&["x", "[y,z]", "w"]));
        assert_eq!(oem("oem_strings=[a=b=c,d]"), s(&["a=b=c", "d"]));
        assert_eq!(oem("oem_strings="), Ok(None));
        assert_eq!(oem("oem_strings=[a],oem_strings=[b]"), s(&["b"]));
        assert_eq!(
            oem("oem_strings=[[x],y]"),
            Err(OptError::Conversion("oem_strings".into(), "[[x],y]".into()))
        );
        assert_eq!(
            oem("oem_strings=[a], x=1"),
            Err(OptError::UnknownOption(" x".into()))
        );
        assert_eq!(
            oem("oem_strings=[a],"),
            Err(OptError::UnknownOption("".into()))
        );
    }

    #[test]
    fn dequote_rules() {
        assert_eq!(dequote("\"a,b=c\""), "a,b=c");
        assert_eq!(dequote("a\"\"b"), "ab");
        assert_eq!(dequote("\"x\"\"y\""), "x\"y");
        assert_eq!(dequote("\"\""), "");
    }
}
