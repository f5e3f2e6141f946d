//! Where the configuration comes from: the process environment, the `*_FILE` secrets and the
//! host name ([`ProcessInputs`]), or a map in the tests ([`MapInputs`]).

#[cfg(test)]
use std::collections::BTreeMap;
use std::path::Path;
#[cfg(test)]
use std::path::PathBuf;

/// A secret file larger than this is a mistake (`/dev/zero`, a disk image).
pub(super) const MAX_SECRET_FILE: u64 = 64 * 1024;

/// `NAME`, or the contents of the file `NAME_FILE` names (trailing newlines dropped), for the
/// operator commands, which need a value or two without the whole configuration. Unreadable
/// or both set: none (the start-up reports those).
pub fn var_or_file(inputs: &dyn Inputs, name: &str) -> Option<String> {
    let set = |n: &str| inputs.var(n).filter(|v| !v.is_empty());
    match (set(name), set(&format!("{name}_FILE"))) {
        (Some(value), None) => Some(value),
        (None, Some(path)) => inputs
            .read_file(Path::new(&path), MAX_SECRET_FILE)
            .ok()
            .map(|t| without_newlines(&t))
            .filter(|v| !v.is_empty()),
        _ => None,
    }
}

/// A secret file's contents without the trailing newlines editors and `echo` add.
pub(super) fn without_newlines(text: &str) -> String {
    text.trim_end_matches(['\n', '\r']).to_string()
}

/// Where the inputs come from: the process environment, the secret files, the hostname.
pub trait Inputs {
    fn var(&self, name: &str) -> Option<String>;
    fn vars_with_prefix(&self, prefix: &str) -> Vec<(String, String)>;
    /// A file of at most `max` bytes.
    fn read_file(&self, path: &Path, max: u64) -> std::io::Result<String>;
    fn hostname(&self) -> String;
    /// True when the variable is set to bytes that are not UTF-8 (`var` gives them lossily).
    fn not_utf8(&self, _name: &str) -> bool {
        false
    }
    /// True when a file system is mounted exactly at `path` (a volume).
    fn mounted(&self, path: &Path) -> bool;
    /// True when `path` is a directory holding anything but `lost+found`.
    fn holds_data(&self, path: &Path) -> bool;
}

/// The text of an open file that must be a regular one (opened without blocking: a FIFO is
/// refused here, never waited on) of at most `max` bytes (a `/dev/zero` is refused too).
pub fn read_regular(file: std::fs::File, max: u64) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind, Read};
    if !file.metadata()?.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    let mut text = String::new();
    file.take(max + 1).read_to_string(&mut text)?;
    if text.len() as u64 > max {
        return Err(Error::new(ErrorKind::InvalidInput, format!("larger than {max} bytes")));
    }
    Ok(text)
}

/// The real process environment.
pub struct ProcessInputs;

impl Inputs for ProcessInputs {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
    }
    fn vars_with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        std::env::vars_os()
            .map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned()))
            .filter(|(k, _)| k.starts_with(prefix))
            .collect()
    }
    /// A secret file: a regular file (symbolic links followed, as Kubernetes mounts them) of at
    /// most `max` bytes. Opened without blocking, so a FIFO cannot hang the start.
    fn read_file(&self, path: &Path, max: u64) -> std::io::Result<String> {
        use std::os::unix::fs::OpenOptionsExt;
        read_regular(std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NONBLOCK).open(path)?, max)
    }
    fn hostname(&self) -> String {
        nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default()
    }
    fn not_utf8(&self, name: &str) -> bool {
        std::env::var_os(name).is_some_and(|v| v.to_str().is_none())
    }
    fn mounted(&self, path: &Path) -> bool {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        mounts.lines().filter_map(|line| line.split(' ').nth(4)).any(|at| Path::new(&unescape_mount(at)) == path)
    }
    fn holds_data(&self, path: &Path) -> bool {
        std::fs::read_dir(path).is_ok_and(|entries| entries.flatten().any(|e| e.file_name() != "lost+found"))
    }
}

/// A mount point as /proc/self/mountinfo writes it: space, tab, newline and backslash as
/// octal escapes (`\040`).
fn unescape_mount(field: &str) -> String {
    let mut out = Vec::new();
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A fixed set of variables, for tests.
#[cfg(test)]
#[derive(Default)]
pub struct MapInputs {
    pub vars: BTreeMap<String, String>,
    pub files: BTreeMap<PathBuf, String>,
    pub hostname: String,
    /// Mount points, and directories that hold data.
    pub mounted: Vec<PathBuf>,
    pub with_data: Vec<PathBuf>,
}

#[cfg(test)]
impl MapInputs {
    /// These variables and this hostname, no secret files.
    pub fn with(vars: &[(&str, &str)], hostname: &str) -> MapInputs {
        MapInputs {
            vars: vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            hostname: hostname.into(),
            ..MapInputs::default()
        }
    }
}

#[cfg(test)]
impl Inputs for MapInputs {
    fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }
    fn vars_with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        self.vars.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(k, v)| (k.clone(), v.clone())).collect()
    }
    fn read_file(&self, path: &Path, _max: u64) -> std::io::Result<String> {
        self.files.get(path).cloned().ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    }
    fn hostname(&self) -> String {
        self.hostname.clone()
    }
    fn mounted(&self, path: &Path) -> bool {
        self.mounted.iter().any(|m| m == path)
    }
    fn holds_data(&self, path: &Path) -> bool {
        self.with_data.iter().any(|m| m == path)
    }
}

/// Every variable of this process that may hold a secret, to remove from a child's
/// environment (postgres, the tools, Patroni, a script, a decompressor): ours and the upstream
/// image's names for them ([`super::SECRET_ENVIRONMENT`]), and every `PGBACKREST_*`
/// (repository keys; pgBackRest reads its options from our configuration file only).
pub fn secret_environment() -> Vec<String> {
    let mut names: Vec<String> = super::SECRET_ENVIRONMENT.iter().map(|s| s.to_string()).collect();
    names
        .extend(std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()).filter(|k| k.starts_with("PGBACKREST_")));
    names
}
