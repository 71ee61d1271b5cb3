//! Who is calling: named keys (principals) with roles, stored only as SHA-256 hashes, and an
//! optional document-level restriction per key.
//!
//! A key is presented as `Authorization: Bearer <key>` or `X-API-Key: <key>`. Its hash is
//! compared with every configured hash in constant time (no early exit, no comparison that
//! stops at the first differing byte), so response timing says nothing about which bytes of a
//! guess were right. The key itself is never stored: `clinsearch keys new` prints it once.
//!
//! Roles are ordered: `read` (search, read notes, embed, evaluate) < `write` (also ingest and
//! delete) < `admin` (also read the audit and see everyone's jobs). What each route needs is
//! declared in one table (`server::routes`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{Error, Result};
use crate::index::Filter;

/// What a principal may do. Ordered: each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Write,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

/// `read`, `write` or `admin` (the `--role` flag and the `role` of a `[[keys]]` entry).
impl std::str::FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Role> {
        match s.trim().to_ascii_lowercase().as_str() {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            other => Err(Error::InvalidInput(format!(
                "role {other:?}: use read, write or admin"
            ))),
        }
    }
}

/// One `[[keys]]` entry of the configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// The principal: the name written to the audit log.
    pub name: String,
    pub role: Role,
    /// Hex SHA-256 of the key.
    pub sha256: String,
    /// Document-level restriction: this key sees only notes passing the filter.
    #[serde(default)]
    pub filter: Option<Filter>,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// Notes outside this filter do not exist for this principal.
    pub restrict: Option<Filter>,
}

impl Principal {
    /// The caller of a server without keys: it binds to loopback only, so the caller is a
    /// user of this machine, with every right.
    pub fn local() -> Principal {
        Principal {
            name: "local".into(),
            role: Role::Admin,
            restrict: None,
        }
    }

    /// `filter` with this principal's restriction laid over it.
    pub fn scope(&self, filter: &Filter) -> Filter {
        match &self.restrict {
            Some(r) => filter.and(r),
            None => filter.clone(),
        }
    }

    /// Whether this principal may see `note`.
    pub fn may_see(&self, note: &crate::note::Note) -> bool {
        self.restrict.as_ref().is_none_or(|r| r.admits(note))
    }
}

/// SHA-256 of `s`, as lowercase hex.
pub fn sha256_hex(s: &[u8]) -> String {
    hex(&Sha256::digest(s))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A fresh key: 32 bytes from the operating system's CSPRNG (256 bits), URL-safe base64,
/// with a `cs_` prefix so a leaked key is recognisable in a secret scanner.
pub fn new_key() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::Io {
        path: PathBuf::from("getrandom"),
        source: std::io::Error::other(e.to_string()),
    })?;
    use base64::Engine as _;
    Ok(format!(
        "cs_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

struct Entry {
    name: String,
    role: Role,
    hash: [u8; 32],
    restrict: Option<Filter>,
}

/// The configured keys.
#[derive(Default)]
pub struct KeyRing {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| (&e.name, e.role)))
            .finish()
    }
}

impl KeyRing {
    /// The `[[keys]]` entries plus the two legacy settings: `api_key` (principal `api_key`,
    /// role admin: it was the key with every right) and `read_api_key` (principal
    /// `read_api_key`, role read). Names must be unique and hashes well formed.
    pub fn new(
        keys: &[KeyEntry],
        api_key: Option<&str>,
        read_api_key: Option<&str>,
    ) -> Result<Self> {
        let mut entries = vec![];
        for k in keys {
            let name = k.name.trim();
            if name.is_empty() || name.chars().any(char::is_control) || name.len() > 128 {
                return Err(Error::InvalidInput(format!(
                    "keys: the name {:?} must be 1-128 printable characters",
                    k.name
                )));
            }
            let hash = unhex(&k.sha256).ok_or_else(|| {
                Error::InvalidInput(format!(
                    "keys: {name}: sha256 must be 64 hex digits (the SHA-256 of the key)"
                ))
            })?;
            if let Some(f) = &k.filter {
                // Access is decided on metadata the indexes and every note hold; an entity
                // restriction would depend on a tagger's output.
                if !f.entities.is_empty() || f.entities_affirmed {
                    return Err(Error::InvalidInput(format!(
                        "keys: {name}: filter: a key cannot be restricted by entities (use note_type, specialty, patient_id or dates)"
                    )));
                }
                for d in [&f.date_from, &f.date_to].into_iter().flatten() {
                    crate::note::date_key(d)
                        .map_err(|e| Error::InvalidInput(format!("keys: {name}: filter: {e}")))?;
                }
            }
            entries.push(Entry {
                name: name.to_string(),
                role: k.role,
                hash,
                restrict: k.filter.clone().filter(|f| !f.is_empty()),
            });
        }
        for (legacy, name, role) in [
            (api_key, "api_key", Role::Admin),
            (read_api_key, "read_api_key", Role::Read),
        ] {
            if let Some(key) = legacy.filter(|k| !k.trim().is_empty()) {
                entries.push(Entry {
                    name: name.into(),
                    role,
                    hash: Sha256::digest(key.trim().as_bytes()).into(),
                    restrict: None,
                });
            }
        }
        let mut names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::InvalidInput(format!(
                "keys: the name {:?} is used twice (each key is its own principal)",
                w[0]
            )));
        }
        Ok(KeyRing { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The principal whose key this is, if any. Every entry is compared, in constant time.
    pub fn authenticate(&self, presented: &str) -> Option<Principal> {
        let h: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        let mut found: Option<&Entry> = None;
        for e in &self.entries {
            if bool::from(e.hash.ct_eq(&h)) {
                found = Some(e);
            }
        }
        found.map(|e| Principal {
            name: e.name.clone(),
            role: e.role,
            restrict: e.restrict.clone(),
        })
    }
}

/// The key ring a server uses, re-read from its configuration file when the file changes
/// (checked at most every two seconds), so that `clinsearch keys revoke` takes effect on a
/// running server without a restart. A file that no longer parses keeps the previous keys and
/// is reported in the log once per change.
pub struct LiveKeys {
    ring: RwLock<Arc<KeyRing>>,
    file: Option<PathBuf>,
    legacy: (Option<String>, Option<String>),
    checked: Mutex<(Instant, Option<SystemTime>)>,
}

const RECHECK: Duration = Duration::from_secs(2);

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl LiveKeys {
    pub fn new(
        ring: KeyRing,
        file: Option<PathBuf>,
        api_key: Option<String>,
        read_api_key: Option<String>,
    ) -> Self {
        let seen = file.as_deref().and_then(mtime);
        LiveKeys {
            ring: RwLock::new(Arc::new(ring)),
            file,
            legacy: (api_key, read_api_key),
            checked: Mutex::new((Instant::now(), seen)),
        }
    }

    /// The current keys.
    pub fn current(&self) -> Arc<KeyRing> {
        self.reload_if_changed();
        self.ring.read().unwrap().clone()
    }

    fn reload_if_changed(&self) {
        let Some(file) = &self.file else { return };
        let mut checked = self.checked.lock().unwrap();
        if checked.0.elapsed() < RECHECK {
            return;
        }
        checked.0 = Instant::now();
        let now = mtime(file);
        if now == checked.1 {
            return;
        }
        checked.1 = now;
        let reloaded = crate::config::Layer::from_file(file).and_then(|l| {
            KeyRing::new(
                l.keys.as_deref().unwrap_or(&[]),
                self.legacy.0.as_deref(),
                self.legacy.1.as_deref(),
            )
        });
        match reloaded {
            Ok(ring) => {
                tracing::info!(
                    keys = ring.len(),
                    "keys re-read from the configuration file"
                );
                *self.ring.write().unwrap() = Arc::new(ring);
            }
            Err(e) => tracing::error!(
                "the configuration file changed but cannot be read; keeping the previous keys: {e}"
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The configuration file's [[keys]] entries (clinsearch keys new | list | revoke)

fn read_doc(path: &Path) -> Result<toml_edit::DocumentMut> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io(path, e)),
    };
    text.parse::<toml_edit::DocumentMut>()
        .map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display())))
}

/// Writes beside the file and renames over it, so a crash leaves the old or the new file,
/// never half of one; the file is private to its owner (it names who may read notes).
fn write_doc(path: &Path, doc: &toml_edit::DocumentMut) -> Result<()> {
    let tmp = path.with_extension("toml.tmp");
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(doc.to_string().as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// A key as `keys list` shows it: never the hash in full.
#[derive(Debug, Clone, Serialize)]
pub struct KeyListing {
    pub name: String,
    pub role: String,
    /// The first 8 hex digits of the hash, to tell entries apart.
    pub sha256_prefix: String,
    pub filter: Option<Filter>,
}

/// Creates a key for `name` with `role` (and an optional restriction), appends its entry to
/// the configuration file (created when missing) and returns the key, which is stored
/// nowhere.
pub fn add_key(path: &Path, name: &str, role: Role, filter: Option<&Filter>) -> Result<String> {
    let mut doc = read_doc(path)?;
    if list_keys_in(&doc)?.iter().any(|k| k.name == name) {
        return Err(Error::InvalidInput(format!(
            "{}: a key named {name:?} exists already (revoke it first)",
            path.display()
        )));
    }
    let key = new_key()?;
    let mut t = toml_edit::Table::new();
    t["name"] = toml_edit::value(name);
    t["role"] = toml_edit::value(role.as_str());
    t["sha256"] = toml_edit::value(sha256_hex(key.as_bytes()));
    if let Some(f) = filter.filter(|f| !f.is_empty()) {
        let mut it = toml_edit::InlineTable::new();
        for (k, v) in [
            ("note_type", &f.note_type),
            ("specialty", &f.specialty),
            ("patient_id", &f.patient_id),
            ("date_from", &f.date_from),
            ("date_to", &f.date_to),
        ] {
            if let Some(v) = v {
                it.insert(k, v.as_str().into());
            }
        }
        t["filter"] = toml_edit::value(it);
    }
    match doc.get_mut("keys") {
        None => {
            let mut arr = toml_edit::ArrayOfTables::new();
            arr.push(t);
            doc.insert("keys", toml_edit::Item::ArrayOfTables(arr));
        }
        Some(toml_edit::Item::ArrayOfTables(arr)) => arr.push(t),
        Some(_) => {
            return Err(Error::InvalidInput(format!(
                "{}: keys must be [[keys]] tables",
                path.display()
            )))
        }
    }
    // The new entry must make a valid configuration before the file is replaced.
    let check: crate::config::Layer = toml::from_str(&doc.to_string())
        .map_err(|e| Error::InvalidInput(format!("{}: {}", path.display(), e.message())))?;
    KeyRing::new(check.keys.as_deref().unwrap_or(&[]), None, None)?;
    write_doc(path, &doc)?;
    Ok(key)
}

fn list_keys_in(doc: &toml_edit::DocumentMut) -> Result<Vec<KeyListing>> {
    let layer: crate::config::Layer = toml::from_str(&doc.to_string())
        .map_err(|e| Error::InvalidInput(e.message().to_string()))?;
    Ok(layer
        .keys
        .unwrap_or_default()
        .into_iter()
        .map(|k| KeyListing {
            sha256_prefix: k.sha256.chars().take(8).collect(),
            name: k.name,
            role: k.role.as_str().into(),
            filter: k.filter,
        })
        .collect())
}

/// The `[[keys]]` entries of the file.
pub fn list_keys(path: &Path) -> Result<Vec<KeyListing>> {
    if !path.exists() {
        return Err(Error::InvalidInput(format!(
            "{}: no such configuration file",
            path.display()
        )));
    }
    list_keys_in(&read_doc(path)?).map_err(|e| match e {
        Error::InvalidInput(m) => Error::InvalidInput(format!("{}: {m}", path.display())),
        e => e,
    })
}

/// Removes the entry named `name`. A running server stops accepting the key within seconds.
pub fn revoke_key(path: &Path, name: &str) -> Result<()> {
    let mut doc = read_doc(path)?;
    let Some(toml_edit::Item::ArrayOfTables(arr)) = doc.get_mut("keys") else {
        return Err(Error::InvalidInput(format!(
            "{}: no [[keys]] entries",
            path.display()
        )));
    };
    let before = arr.len();
    arr.retain(|t| t.get("name").and_then(|v| v.as_str()) != Some(name));
    if arr.len() == before {
        return Err(Error::InvalidInput(format!(
            "{}: no key named {name:?}",
            path.display()
        )));
    }
    if arr.is_empty() {
        doc.remove("keys");
    }
    write_doc(path, &doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, role: Role, key: &str) -> KeyEntry {
        KeyEntry {
            name: name.into(),
            role,
            sha256: sha256_hex(key.as_bytes()),
            filter: None,
        }
    }

    #[test]
    fn a_key_authenticates_as_its_principal_and_nothing_else_does() {
        let ring = KeyRing::new(
            &[
                entry("alice", Role::Read, "k-alice"),
                entry("bob", Role::Write, "k-bob"),
            ],
            Some("legacy"),
            Some("legacy-read"),
        )
        .unwrap();
        assert_eq!(ring.authenticate("k-alice").unwrap().name, "alice");
        assert_eq!(ring.authenticate("k-bob").unwrap().role, Role::Write);
        assert_eq!(ring.authenticate("legacy").unwrap().name, "api_key");
        assert_eq!(ring.authenticate("legacy").unwrap().role, Role::Admin);
        assert_eq!(ring.authenticate("legacy-read").unwrap().role, Role::Read);
        for wrong in ["", "k-alic", "k-alicee", "K-ALICE", &sha256_hex(b"k-alice")] {
            assert!(ring.authenticate(wrong).is_none(), "{wrong:?}");
        }
    }

    #[test]
    fn bad_entries_are_refused_with_the_reason() {
        let mut bad = entry("alice", Role::Read, "x");
        bad.sha256 = "abc".into();
        let e = KeyRing::new(&[bad], None, None).unwrap_err().to_string();
        assert!(e.contains("64 hex digits"), "{e}");
        let e = KeyRing::new(
            &[entry("a", Role::Read, "1"), entry("a", Role::Admin, "2")],
            None,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("used twice"), "{e}");
    }

    #[test]
    fn keys_are_long_random_and_url_safe() {
        let a = new_key().unwrap();
        let b = new_key().unwrap();
        assert_ne!(a, b);
        assert!(a.len() >= 3 + 43, "{a}");
        assert!(a[3..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }

    #[test]
    fn keys_new_list_and_revoke_edit_the_file_and_keep_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "# our server\naddr = \"127.0.0.1:9000\"\n").unwrap();
        let onc = Filter {
            specialty: Some("Oncology".into()),
            ..Default::default()
        };
        let k1 = add_key(&p, "alice", Role::Read, Some(&onc)).unwrap();
        let k2 = add_key(&p, "bob", Role::Admin, None).unwrap();
        assert!(add_key(&p, "alice", Role::Read, None).is_err());
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("# our server") && text.contains("addr"));
        assert!(
            !text.contains(&k1) && !text.contains(&k2),
            "keys are stored only as hashes"
        );
        let listed = list_keys(&p).unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].name, "alice");
        assert_eq!(
            listed[0].filter.as_ref().unwrap().specialty.as_deref(),
            Some("Oncology")
        );
        let layer = crate::config::Layer::from_file(&p).unwrap();
        let ring = KeyRing::new(layer.keys.as_deref().unwrap(), None, None).unwrap();
        let alice = ring.authenticate(&k1).unwrap();
        assert_eq!(alice.role, Role::Read);
        assert!(alice.restrict.is_some());
        revoke_key(&p, "alice").unwrap();
        assert!(revoke_key(&p, "alice").is_err());
        let layer = crate::config::Layer::from_file(&p).unwrap();
        let ring = KeyRing::new(layer.keys.as_deref().unwrap(), None, None).unwrap();
        assert!(ring.authenticate(&k1).is_none());
        assert!(ring.authenticate(&k2).is_some());
    }
}
