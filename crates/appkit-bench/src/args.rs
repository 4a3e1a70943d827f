//! A tiny `--name value` flag parser: benches take few flags and no positional arguments.

use std::collections::HashMap;
use std::str::FromStr;

use anyhow::{Context, Result, bail};

/// Parsed `--name value` / `--name=value` pairs; each flag must be consumed exactly once.
#[derive(Debug)]
pub(crate) struct Flags {
    values: HashMap<String, String>,
}

impl Flags {
    /// Parses the arguments after the mode.
    pub(crate) fn parse(args: impl Iterator<Item = String>) -> Result<Self> {
        let mut values = HashMap::new();
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            let Some(flag) = arg.strip_prefix("--") else {
                bail!("unexpected argument `{arg}` (flags look like --name value)");
            };
            let (name, value) = match flag.split_once('=') {
                Some((n, v)) => (n.to_owned(), v.to_owned()),
                None => {
                    let value = args
                        .next()
                        .with_context(|| format!("--{flag} needs a value"))?;
                    (flag.to_owned(), value)
                }
            };
            if values.insert(name.clone(), value).is_some() {
                bail!("--{name} given twice");
            }
        }
        Ok(Self { values })
    }

    /// Takes `--name`, parsed, or `default` when absent.
    pub(crate) fn take<T>(&mut self, name: &str, default: T) -> Result<T>
    where
        T: FromStr,
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        match self.values.remove(name) {
            Some(v) => v
                .parse()
                .with_context(|| format!("--{name}: cannot parse `{v}`")),
            None => Ok(default),
        }
    }

    /// Fails on flags nobody took.
    pub(crate) fn finish(self) -> Result<()> {
        let mut left: Vec<_> = self.values.into_keys().collect();
        left.sort();
        match left.first() {
            None => Ok(()),
            Some(_) => bail!("unknown flag(s): --{}", left.join(", --")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Result<Flags> {
        Flags::parse(args.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn takes_both_spellings_and_defaults() {
        let mut f = flags(&["--tasks", "10", "--rate=5"]).unwrap();
        assert_eq!(f.take("tasks", 1usize).unwrap(), 10);
        assert_eq!(f.take("rate", 1u32).unwrap(), 5);
        assert_eq!(f.take("slots", 64usize).unwrap(), 64);
        f.finish().unwrap();
    }

    #[test]
    fn rejects_unknown_missing_and_repeated_flags() {
        assert!(flags(&["--tasks"]).is_err());
        assert!(flags(&["tasks"]).is_err());
        assert!(flags(&["--a", "1", "--a", "2"]).is_err());
        let f = flags(&["--bogus", "1"]).unwrap();
        assert!(f.finish().is_err());
        let mut f = flags(&["--tasks", "x"]).unwrap();
        assert!(f.take("tasks", 1usize).is_err());
    }
}
