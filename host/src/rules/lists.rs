//! Named lists rules look values up in (block/allow lists), loaded from files.
//!
//! Each list is swapped whole on reload, so a rule never sees a half-loaded
//! list. Card lists hold PANs on disk and tokens in memory.

use arc_swap::ArcSwap;
use hashbrown::{DefaultHashBuilder, HashTable};
use std::collections::BTreeMap;
use std::hash::{BuildHasher as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{ListConfig, ListKind};
use crate::decode::{Tokenizer, pan};

/// One named list.
#[derive(Debug)]
pub struct List {
    /// foldhash rather than std's SipHash: a look-up is a few nanoseconds
    /// instead of tens. Events only look values up; the table is built from
    /// the list file, so crafted values cannot lengthen its probe chains.
    /// Held as bytes, so a rule's value is looked up as it comes, without
    /// checking it is UTF-8 first (a value that is not matches no entry).
    values: ArcSwap<Values>,
}

/// A list's entries, with a bitmap in front of the table: most look-ups are
/// of values the list does not hold, and those are answered from one bit
/// (the bitmap has 16 to 32 bits per entry, a power of two, so at most
/// about one in 16 of them goes on to the table). With the value hashed
/// once for both, a look-up took 69 instructions instead of 88 (callgrind,
/// a hundred rules, a fifth of which look four values up).
pub struct Values {
    table: HashTable<Box<[u8]>>,
    /// One bit per value of the hash's top `64 - shift` bits: set if an
    /// entry's hash starts so.
    filter: Box<[u64]>,
    /// 64 minus the length in bits of the prefix the bitmap is indexed by.
    shift: u32,
    hasher: DefaultHashBuilder,
}

impl Values {
    /// The list of `entries`, duplicates once.
    pub fn new(entries: impl IntoIterator<Item = Box<[u8]>>) -> Self {
        let hasher = DefaultHashBuilder::default();
        let hash = |v: &[u8]| hash_with(&hasher, v);
        let mut table: HashTable<Box<[u8]>> = HashTable::new();
        for value in entries {
            if let hashbrown::hash_table::Entry::Vacant(slot) =
                table.entry(hash(&value), |v| **v == *value, |v| hash(v))
            {
                slot.insert(value);
            }
        }
        let bits = (table.len() * 16).next_power_of_two().max(64);
        let shift = 64 - bits.trailing_zeros();
        let mut filter = vec![0u64; bits / 64].into_boxed_slice();
        for v in &table {
            let bit = hash(v) >> shift;
            filter[(bit / 64) as usize] |= 1 << (bit % 64);
        }
        Self { table, filter, shift, hasher }
    }

    /// Whether the list holds `value`.
    #[inline]
    pub fn contains(&self, value: &[u8]) -> bool {
        let h = hash_with(&self.hasher, value);
        let bit = h >> self.shift;
        match self.filter.get((bit / 64) as usize) {
            Some(word) if word & (1 << (bit % 64)) != 0 => self.table.find(h, |v| **v == *value).is_some(),
            _ => false,
        }
    }

    /// The entries, in no order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.table.iter().map(|v| &**v)
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

/// `value`'s hash, for the table and the bitmap alike.
fn hash_with(hasher: &DefaultHashBuilder, value: &[u8]) -> u64 {
    let mut h = hasher.build_hasher();
    h.write(value);
    h.finish()
}

impl std::fmt::Debug for Values {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Values").field("len", &self.len()).finish_non_exhaustive()
    }
}

impl List {
    /// Whether the list holds `value`.
    pub fn contains(&self, value: &[u8]) -> bool {
        self.values.load().contains(value)
    }

    /// Entries in the list.
    pub fn len(&self) -> usize {
        self.values.load().len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One holder's view of a [`List`], for look-ups in a row: while the list
/// is unchanged a look-up reads one pointer to see so, instead of taking
/// the list anew (an `ArcSwap` load, about 35 instructions each time).
/// A reload is seen at the next look-up; until then the reader keeps the
/// entries it last read alive.
pub struct ListReader(arc_swap::Cache<Entries, Arc<Values>>);

/// What a [`ListReader`] reads through: the list's swappable entries.
struct Entries(Arc<List>);

impl std::ops::Deref for Entries {
    type Target = ArcSwap<Values>;
    fn deref(&self) -> &Self::Target {
        &self.0.values
    }
}

impl ListReader {
    /// A reader of `list`.
    pub fn new(list: Arc<List>) -> Self {
        Self(arc_swap::Cache::new(Entries(list)))
    }

    /// Whether the list holds `value`.
    pub fn contains(&mut self, value: &[u8]) -> bool {
        self.0.load().contains(value)
    }
}

impl std::fmt::Debug for ListReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListReader").finish_non_exhaustive()
    }
}

/// Why a list could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// The file could not be read.
    #[error("list `{name}`: cannot read {}", path.display())]
    Read {
        /// List name.
        name: String,
        /// Its file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A card list holds something that is not a PAN.
    #[error("list `{name}`: {path}:{line}: not a card number (12 to 19 digits)")]
    NotAPan {
        /// List name.
        name: String,
        /// Its file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
    },
}

/// All configured lists.
#[derive(Debug, Default)]
pub struct Lists {
    lists: BTreeMap<String, Arc<List>>,
    /// Where reloads that change a list are recorded (the daemon's).
    changes: std::sync::OnceLock<Arc<super::changes::ChangeLog>>,
}

impl Lists {
    /// Loads every list in `config`.
    ///
    /// # Errors
    /// [`ListError`] naming the list, file and line.
    pub fn load(config: &BTreeMap<String, ListConfig>, tokenizer: &Tokenizer) -> Result<Self, ListError> {
        let mut lists = BTreeMap::new();
        for (name, cfg) in config {
            let values = read_list(name, cfg, tokenizer)?;
            lists.insert(name.clone(), Arc::new(List { values: ArcSwap::from_pointee(values) }));
        }
        Ok(Self { lists, changes: std::sync::OnceLock::new() })
    }

    /// Reloads every list from its file; a list that fails keeps its
    /// previous contents and the error is returned.
    pub fn reload(&self, config: &BTreeMap<String, ListConfig>, tokenizer: &Tokenizer) -> Vec<ListError> {
        let mut errors = Vec::new();
        for (name, list) in &self.lists {
            let Some(cfg) = config.get(name) else {
                continue;
            };
            match read_list(name, cfg, tokenizer) {
                Ok(values) => {
                    let old = list.values.swap(Arc::new(values));
                    if let Some(log) = self.changes.get() {
                        record_change(log, name, cfg, &old, &list.values.load());
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        errors
    }

    /// Records each reload that changes a list in `log`.
    pub fn set_change_log(&self, log: Arc<super::changes::ChangeLog>) {
        let _ = self.changes.set(log);
    }

    /// Adds an empty list for each name not configured (for `vigil check`);
    /// returns the names added.
    pub fn add_placeholders<'a>(&mut self, names: impl IntoIterator<Item = &'a String>) -> Vec<String> {
        let mut added = Vec::new();
        for name in names {
            if !self.lists.contains_key(name) {
                self.lists.insert(name.clone(), Arc::new(List { values: ArcSwap::from_pointee(Values::new([])) }));
                added.push(name.clone());
            }
        }
        added
    }

    /// The list called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<List>> {
        self.lists.get(name).cloned()
    }
}

/// Records a reload of list `name` that added or removed values.
fn record_change(log: &super::changes::ChangeLog, name: &str, cfg: &ListConfig, old: &Values, new: &Values) {
    let show = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    let mut added: Vec<String> = new.iter().filter(|v| !old.contains(v)).map(show).collect();
    let mut removed: Vec<String> = old.iter().filter(|v| !new.contains(v)).map(show).collect();
    if added.is_empty() && removed.is_empty() {
        return;
    }
    added.sort();
    removed.sort();
    let (added_count, removed_count) = (added.len(), removed.len());
    added.truncate(super::changes::MAX_LISTED);
    removed.truncate(super::changes::MAX_LISTED);
    log.record(super::changes::Entry {
        change: "list".into(),
        list: Some(name.to_owned()),
        file: Some(cfg.path.display().to_string()),
        list_hash: std::fs::read(&cfg.path).ok().map(|b| super::module_hash(&b)),
        added,
        added_count: Some(added_count),
        removed,
        removed_count: Some(removed_count),
        cause: "list file changed".into(),
        ..super::changes::Entry::default()
    });
}

fn read_list(name: &str, cfg: &ListConfig, tokenizer: &Tokenizer) -> Result<Values, ListError> {
    let read_err = |source| ListError::Read { name: name.to_owned(), path: cfg.path.clone(), source };
    let text = std::fs::read_to_string(&cfg.path).map_err(read_err)?;
    parse_list(name, &cfg.path, &text, cfg.kind, tokenizer)
}

fn parse_list(name: &str, path: &Path, text: &str, kind: ListKind, tokenizer: &Tokenizer) -> Result<Values, ListError> {
    let mut values = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        let value = match kind {
            ListKind::Plain => entry.to_owned(),
            ListKind::Card => {
                let digits = pan::pan_digits(entry).ok_or_else(|| ListError::NotAPan {
                    name: name.to_owned(),
                    path: path.to_owned(),
                    line: i + 1,
                })?;
                tokenizer.token(&digits)
            }
        };
        values.push(value.into_bytes().into_boxed_slice());
    }
    Ok(Values::new(values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_sees_a_reload_at_its_next_look_up() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("devices.txt");
        std::fs::write(&path, "dev-1\n").expect("write");
        let config = BTreeMap::from([("devices".to_owned(), ListConfig { path: path.clone(), kind: ListKind::Plain })]);
        let t = Tokenizer::new(b"list-test-key-0123");
        let lists = Lists::load(&config, &t).expect("load");
        let mut reader = ListReader::new(lists.lists["devices"].clone());
        assert!(reader.contains(b"dev-1") && !reader.contains(b"dev-2"));
        std::fs::write(&path, "dev-2\n").expect("write");
        assert!(lists.reload(&config, &t).is_empty());
        assert!(reader.contains(b"dev-2"), "the reloaded list");
        assert!(!reader.contains(b"dev-1"), "not the one before");
    }

    #[test]
    fn every_entry_is_found_and_nothing_else() {
        for n in [0, 1, 3, 64, 1000, 20_000] {
            let values = Values::new((0..n).map(|i| format!("v-{}", 2 * i).into_bytes().into_boxed_slice()));
            assert_eq!(values.len(), n);
            for i in 0..2 * n + 10 {
                let v = format!("v-{i}");
                assert_eq!(values.contains(v.as_bytes()), i % 2 == 0 && i < 2 * n, "{v} of {n}");
            }
            assert!(!values.contains(b""));
        }
        let twice = Values::new([b"a".to_vec().into_boxed_slice(), b"a".to_vec().into_boxed_slice()]);
        assert_eq!(twice.iter().collect::<Vec<_>>(), [&b"a"[..]]);
    }

    #[test]
    fn card_lists_hold_tokens_not_pans() {
        let t = Tokenizer::new(b"list-test-key-0123");
        let set = parse_list("c", Path::new("c.txt"), "# bad cards\n4111 1111 1111 1111\n\n", ListKind::Card, &t)
            .expect("parses");
        assert!(set.contains(t.token("4111111111111111").as_bytes()));
        assert!(!set.iter().any(|v| v.windows(4).any(|w| w == b"4111")));
    }

    #[test]
    fn a_bad_card_line_is_named() {
        let t = Tokenizer::new(b"list-test-key-0123");
        let e =
            parse_list("c", Path::new("c.txt"), "4111111111111111\nnope\n", ListKind::Card, &t).expect_err("rejects");
        assert!(e.to_string().contains("c.txt:2"), "{e}");
    }

    #[test]
    fn plain_lists_strip_comments_and_blanks() {
        let t = Tokenizer::new(b"list-test-key-0123");
        let set = parse_list("p", Path::new("p.txt"), "dev-1 # seen in fraud ring\n  dev-2\n#x\n", ListKind::Plain, &t)
            .expect("parses");
        assert_eq!(set.len(), 2);
        assert!(set.contains(&b"dev-1"[..]) && set.contains(&b"dev-2"[..]));
    }
}
