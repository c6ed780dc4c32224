//! `--flag value` pairs, taken by name; whatever no scenario took is an error, so a typo in the
//! runner cannot silently fall back to a default.

use std::collections::BTreeMap;
use std::str::FromStr;

pub(crate) struct Args {
    values: BTreeMap<String, String>,
}

impl Args {
    pub(crate) fn parse(argv: impl Iterator<Item = String>) -> Result<Self, String> {
        let mut values = BTreeMap::new();
        let mut argv = argv.peekable();
        while let Some(arg) = argv.next() {
            let Some(flag) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument {arg:?}"));
            };
            let (name, value) = match flag.split_once('=') {
                Some((name, value)) => (name.to_owned(), value.to_owned()),
                None => (flag.to_owned(), argv.next().ok_or_else(|| format!("--{flag}: missing value"))?),
            };
            if values.insert(name.clone(), value).is_some() {
                return Err(format!("--{name} given twice"));
            }
        }
        Ok(Self { values })
    }

    pub(crate) fn take_str(&mut self, name: &str) -> Option<String> {
        self.values.remove(name)
    }

    pub(crate) fn take<T: FromStr>(&mut self, name: &str, default: T) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        match self.values.remove(name) {
            Some(text) => text.parse().map_err(|e| format!("--{name} {text}: {e}")),
            None => Ok(default),
        }
    }

    pub(crate) fn require<T: FromStr>(&mut self, name: &str) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        let text = self.values.remove(name).ok_or_else(|| format!("--{name} is required"))?;
        text.parse().map_err(|e| format!("--{name} {text}: {e}"))
    }

    pub(crate) fn finish(self) -> Result<(), String> {
        match self.values.keys().next() {
            Some(name) => Err(format!("unknown option --{name}")),
            None => Ok(()),
        }
    }
}
