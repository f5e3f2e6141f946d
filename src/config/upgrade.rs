//! The major-version upgrade at start (docs/upgrade.md): whether one is wanted,
//! how pg_upgrade moves the data, and what happens around it.

use super::Parser;

/// How pg_upgrade carries the relation files into the new cluster (`POSTGRES_UPGRADE_METHOD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeMethod {
    /// Hard links: seconds whatever the size; the old cluster is unusable once the new one ran.
    Link,
    /// Reflinks (copy-on-write file systems only): fast, and the old cluster stays usable.
    Clone,
    /// A full copy: slow, needs the space twice, the old cluster stays usable.
    Copy,
}

impl UpgradeMethod {
    pub fn flag(self) -> &'static str {
        match self {
            UpgradeMethod::Link => "--link",
            UpgradeMethod::Clone => "--clone",
            UpgradeMethod::Copy => "--copy",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// `POSTGRES_UPGRADE=auto`: a cluster of an older major is upgraded in place at start.
    pub auto: bool,
    pub method: UpgradeMethod,
    /// `POSTGRES_UPGRADE_KEEP_OLD` (default true): the old cluster stays in PGDATA's upgrade
    /// directory after a successful upgrade.
    pub keep_old: bool,
    /// `POSTGRES_UPGRADE_REINDEX` (default true): indexes on collations whose version changed
    /// are rebuilt; false refuses to finish the upgrade while there are any.
    pub reindex: bool,
}

impl Parser<'_> {
    pub(super) fn upgrade(&mut self) -> Upgrade {
        let auto = match self.var("POSTGRES_UPGRADE").map(|v| v.to_ascii_lowercase()).as_deref() {
            None | Some("off") => false,
            Some("auto") => true,
            Some(other) => {
                self.problem("POSTGRES_UPGRADE", format!("{other:?} is not accepted; accepted: auto, off"));
                false
            }
        };
        let method = match self.var("POSTGRES_UPGRADE_METHOD").map(|v| v.to_ascii_lowercase()).as_deref() {
            None | Some("link") => UpgradeMethod::Link,
            Some("clone") => UpgradeMethod::Clone,
            Some("copy") => UpgradeMethod::Copy,
            Some(other) => {
                self.problem(
                    "POSTGRES_UPGRADE_METHOD",
                    format!("{other:?} is not accepted; accepted: link, clone, copy"),
                );
                UpgradeMethod::Link
            }
        };
        let keep_old = self.boolean("POSTGRES_UPGRADE_KEEP_OLD").unwrap_or(true);
        let reindex = self.boolean("POSTGRES_UPGRADE_REINDEX").unwrap_or(true);
        Upgrade { auto, method, keep_old, reindex }
    }
}

#[cfg(test)]
mod tests {
    use super::UpgradeMethod;
    use crate::config::{Config, MapInputs};

    fn parse(vars: &[(&str, &str)]) -> Result<Config, String> {
        let mut all = vec![("POSTGRES_PASSWORD", "pw")];
        all.extend_from_slice(vars);
        Config::from_inputs(&MapInputs::with(&all, "host")).map_err(|e| e.to_string())
    }

    #[test]
    fn off_by_default_link_keep_and_reindex() {
        let u = parse(&[]).unwrap().upgrade;
        assert!(!u.auto);
        assert_eq!((u.method, u.keep_old, u.reindex), (UpgradeMethod::Link, true, true));
    }

    #[test]
    fn auto_with_each_choice() {
        let u = parse(&[
            ("POSTGRES_UPGRADE", "auto"),
            ("POSTGRES_UPGRADE_METHOD", "copy"),
            ("POSTGRES_UPGRADE_KEEP_OLD", "false"),
            ("POSTGRES_UPGRADE_REINDEX", "no"),
        ])
        .unwrap()
        .upgrade;
        assert!(u.auto);
        assert_eq!((u.method, u.keep_old, u.reindex), (UpgradeMethod::Copy, false, false));
    }

    #[test]
    fn bad_values_name_the_variable_and_what_is_accepted() {
        let e = parse(&[("POSTGRES_UPGRADE", "yes"), ("POSTGRES_UPGRADE_METHOD", "rsync")]).unwrap_err();
        assert!(e.contains("POSTGRES_UPGRADE: \"yes\" is not accepted; accepted: auto, off"), "{e}");
        assert!(e.contains("POSTGRES_UPGRADE_METHOD: \"rsync\" is not accepted; accepted: link, clone, copy"), "{e}");
    }
}
