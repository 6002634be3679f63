//! The duplicate index's storage: tables in unlinked temporary files, not in the heap.
//!
//! The index remembers every ticket kept so far (its fingerprints), so it grows with rows: about
//! 350 bytes a ticket with the tables' room, 350 MB at a million tickets, which in the heap would
//! be most of a large build's memory. Here it lives in files, read and written with positioned
//! I/O (`pread`/`pwrite`); the page cache keeps what it can, and the build's resident memory holds
//! only buffers of a fixed size: the pending batch and a Bloom filter (10 bits a key, up to a
//! bound: past it, more keys share its bits and more lookups read the file, but memory stays flat).
//!
//! Lookups stay cheap because most keys were never seen: the Bloom filter answers those without
//! touching the file. Inserts collect in memory and are written in batches, sorted by where they
//! go, a few pages at a time, so a batch of two hundred thousand keys costs one pass over the table,
//! not a million system calls. The files are created unlinked (`tempfile::tempfile_in`), so a
//! build that stops, however it stops, leaves nothing behind.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes of one table entry: key (8), slot + 1 (4; 0 for an empty entry), padding (4).
const ENTRY: usize = 16;
/// Entries of one page, the unit a batch reads and writes.
const PAGE_ENTRIES: usize = 256;
const PAGE: usize = PAGE_ENTRIES * ENTRY;
/// Inserts kept in memory before they are written: 3/4 of 2^18, what the pending table of 2^18
/// entries (4 MB) holds with short probes. Each batch is one pass over the table's file, so fewer,
/// larger batches cost less time.
const PENDING: usize = (1 << 18) / 4 * 3;
/// Keys moved at a time when the table doubles: they come from consecutive entries, so each
/// group is written into two runs of pages of the new file, and a small group costs no more
/// passes than a large one (the vector it is collected in was another 4-6 MB at doubling).
const MOVE_GROUP: usize = 1 << 15;
/// Keys the table's file has room for at first, at most (4 MB).
const INITIAL_KEYS: usize = 1 << 17;
/// Bloom filter bits per key, and probes per key: about 1% false positives.
const BLOOM_BITS_PER_KEY: usize = 10;
/// The most a table's Bloom filter takes, in 64-bit words (4 MB): a million tickets' band keys
/// (8 million) at 4 bits a key, about 15% false positives, each a read from the page cache.
const BLOOM_MAX_WORDS: usize = 1 << 19;
const BLOOM_PROBES: u64 = 3;

fn temporary(dir: Option<&Path>) -> io::Result<File> {
    match dir {
        Some(dir) => tempfile::tempfile_in(dir),
        None => tempfile::tempfile(),
    }
}

/// A hash table from 64-bit keys (hashes already) to the first slot inserted under each, with
/// linear probing, in a file; kept at most half full, doubled when it fills.
pub(super) struct FirstSlots {
    file: File,
    /// Entries in the file (a power of two).
    entries: usize,
    /// Keys in the file.
    stored: usize,
    /// Keys inserted since the last batch was written.
    pending: Pending,
    /// How many keys a batch holds (at most [`PENDING`]; fewer in tests).
    batch: usize,
    /// Every key inserted (file and pending), as bits.
    bloom: Vec<u64>,
    dir: Option<PathBuf>,
}

impl FirstSlots {
    /// A table for about `keys` keys, in a file in `dir` (the system's temporary folder when
    /// `None`), written in batches of `share` x [`PENDING`] keys (a table that takes fewer keys
    /// than another of the same index passes over a smaller file, so smaller batches cost it
    /// little). The file starts small and doubles as keys come (a batch passes over all of it,
    /// and repeated texts share keys, so it is often far smaller than `keys` suggests); the
    /// Bloom filter is sized for `keys`.
    pub(super) fn new(dir: Option<&Path>, keys: usize, share: f64) -> io::Result<FirstSlots> {
        let batch = ((PENDING as f64 * share.clamp(0.0, 1.0)) as usize).max(PAGE_ENTRIES);
        let entries = (keys.clamp(PAGE_ENTRIES, INITIAL_KEYS) * 2).next_power_of_two();
        let file = temporary(dir)?;
        file.set_len((entries * ENTRY) as u64)?;
        let bloom_words = (keys.max(64) * BLOOM_BITS_PER_KEY / 64)
            .next_power_of_two()
            .min(BLOOM_MAX_WORDS);
        Ok(FirstSlots {
            file,
            entries,
            stored: 0,
            // Its full size at once: a table that grows holds its old and new entries together.
            pending: Pending::for_keys(keys.min(batch)),
            batch,
            bloom: vec![0; bloom_words],
            dir: dir.map(Path::to_path_buf),
        })
    }

    fn bloom_bits(&self, key: u64) -> impl Iterator<Item = (usize, u64)> + use<> {
        let bits = (self.bloom.len() * 64) as u64;
        let step = key.rotate_left(29) | 1;
        (0..BLOOM_PROBES).map(move |i| {
            let bit = key.wrapping_add(i.wrapping_mul(step)) & (bits - 1);
            ((bit / 64) as usize, 1u64 << (bit % 64))
        })
    }

    /// The first slot inserted under `key`.
    pub(super) fn get(&self, key: u64) -> io::Result<Option<u32>> {
        if !self
            .bloom_bits(key)
            .all(|(word, bit)| self.bloom[word] & bit != 0)
        {
            return Ok(None);
        }
        if let Some(slot) = self.pending.get(key) {
            return Ok(Some(slot));
        }
        let mask = self.entries - 1;
        let mut at = key as usize & mask;
        let mut page = [0u8; PAGE];
        loop {
            // Read from `at` to the end of its page: the probe continues there.
            let in_page = PAGE_ENTRIES - at % PAGE_ENTRIES;
            let bytes = &mut page[..in_page * ENTRY];
            self.file.read_exact_at(bytes, (at * ENTRY) as u64)?;
            for entry in bytes.chunks_exact(ENTRY) {
                let slot = read_u32(&entry[8..12]);
                if slot == 0 {
                    return Ok(None);
                }
                if read_u64(&entry[..8]) == key {
                    return Ok(Some(slot - 1));
                }
            }
            at = (at + in_page) & mask;
        }
    }

    /// Inserts `slot` under `key` unless the key has a slot already (the first one stays).
    pub(super) fn insert_first(&mut self, key: u64, slot: u32) -> io::Result<()> {
        if self.get(key)?.is_some() {
            return Ok(());
        }
        for (word, bit) in self.bloom_bits(key).collect::<Vec<_>>() {
            self.bloom[word] |= bit;
        }
        self.pending.insert(key, slot);
        if self.pending.len() >= self.batch || self.pending.is_full() {
            self.write_pending()?;
        }
        Ok(())
    }

    /// Writes the pending keys into the file (doubling it first when they would fill it past
    /// half).
    fn write_pending(&mut self) -> io::Result<()> {
        while (self.stored + self.pending.len()) * 2 > self.entries {
            self.double()?;
        }
        self.stored += self.pending.len();
        let mask = self.entries - 1;
        place_sorted(&self.file, self.entries, self.pending.sorted_by(mask))?;
        self.pending.clear();
        Ok(())
    }

    /// Moves every entry into a file twice the size.
    fn double(&mut self) -> io::Result<()> {
        let entries = self.entries * 2;
        let file = temporary(self.dir.as_deref())?;
        file.set_len((entries * ENTRY) as u64)?;
        let mut moved = Vec::with_capacity(MOVE_GROUP + PAGE_ENTRIES);
        let mut page = vec![0u8; PAGE];
        for first in (0..self.entries).step_by(PAGE_ENTRIES) {
            self.file.read_exact_at(&mut page, (first * ENTRY) as u64)?;
            for entry in page.chunks_exact(ENTRY) {
                let slot = read_u32(&entry[8..12]);
                if slot != 0 {
                    moved.push((read_u64(&entry[..8]), slot - 1));
                }
            }
            if moved.len() >= MOVE_GROUP {
                place_all(&file, entries, &mut moved)?;
                moved.clear();
            }
        }
        place_all(&file, entries, &mut moved)?;
        self.file = file;
        self.entries = entries;
        Ok(())
    }

    /// Bytes of the table's file and its filter.
    pub(super) fn bytes(&self) -> usize {
        self.entries * ENTRY + self.bloom.len() * 8
    }
}

/// Writes new keys (none of them in the file yet) into a table of `entries` entries, sorted by
/// where they go first.
fn place_all(file: &File, entries: usize, keys: &mut [(u64, u32)]) -> io::Result<()> {
    let mask = entries - 1;
    keys.sort_unstable_by_key(|(key, _)| *key as usize & mask);
    place_sorted(file, entries, keys.iter().copied())
}

/// Writes new keys (none of them in the file yet), sorted by where they go, into a table of
/// `entries` entries, through a window of pages that only moves forward.
fn place_sorted(
    file: &File,
    entries: usize,
    keys: impl Iterator<Item = (u64, u32)>,
) -> io::Result<()> {
    let mask = entries - 1;
    let mut window = Window::default();
    for (key, slot) in keys {
        let mut at = key as usize & mask;
        window.retire_before(file, at / PAGE_ENTRIES)?;
        loop {
            let entry = window.entry(file, at)?;
            if read_u32(&entry[8..12]) == 0 {
                entry[..8].copy_from_slice(&key.to_le_bytes());
                // + 1 marks the entry used; slots are counted in u32 (see `DedupIndex::insert`).
                entry[8..12].copy_from_slice(&slot.saturating_add(1).to_le_bytes());
                break;
            }
            at = (at + 1) & mask;
        }
    }
    window.retire_before(file, usize::MAX)
}

/// The keys inserted since the last batch was written: an open-addressing table (linear probing)
/// in one vector, at most 3/4 full. A batch is sorted where it is when it is written: a map would
/// be drained into a second vector nearly its own size first, at every batch.
struct Pending {
    /// (key, slot + 1); slot + 1 = 0 marks an empty entry (key 0 is a key like any other).
    entries: Vec<(u64, u32)>,
    len: usize,
}

impl Pending {
    /// A table that holds `keys` keys without growing (it never grows: see [`Pending::is_full`]).
    fn for_keys(keys: usize) -> Pending {
        let size = (keys.max(1) * 4).div_ceil(3).next_power_of_two();
        Pending {
            entries: vec![(0, 0); size],
            len: 0,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds as many keys as it keeps probes short for.
    fn is_full(&self) -> bool {
        self.len >= self.entries.len() / 4 * 3
    }

    /// The index a key's probe starts at: the key's high bits (its low bits choose its place in
    /// the file).
    fn home(&self, key: u64) -> usize {
        let bits = self.entries.len().trailing_zeros();
        if bits == 0 {
            0
        } else {
            (key >> (64 - bits)) as usize
        }
    }

    fn get(&self, key: u64) -> Option<u32> {
        let mask = self.entries.len() - 1;
        let mut at = self.home(key);
        loop {
            let (stored, slot) = self.entries[at];
            if slot == 0 {
                return None;
            }
            if stored == key {
                return Some(slot - 1);
            }
            at = (at + 1) & mask;
        }
    }

    /// Adds `key`, which it does not hold, with `slot`. The caller writes the batch once the
    /// table is full, so there is always an empty entry to stop a probe.
    fn insert(&mut self, key: u64, slot: u32) {
        let mask = self.entries.len() - 1;
        let mut at = self.home(key);
        while self.entries[at].1 != 0 {
            at = (at + 1) & mask;
        }
        // + 1 marks the entry used; slots are counted in u32 (see `DedupIndex::insert`).
        self.entries[at] = (key, slot.saturating_add(1));
        self.len += 1;
    }

    /// The keys and slots, sorted in place by `key & mask` (where they go in the file). The
    /// table is no longer one to look keys up in until [`Pending::clear`].
    fn sorted_by(&mut self, mask: usize) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.entries.sort_unstable_by_key(|&(key, slot)| {
            if slot == 0 {
                usize::MAX
            } else {
                key as usize & mask
            }
        });
        self.entries[..self.len]
            .iter()
            .map(|&(key, slot)| (key, slot - 1))
    }

    fn clear(&mut self) {
        self.entries.fill((0, 0));
        self.len = 0;
    }
}

/// Consecutive pages of a table read into memory, written back when retired.
#[derive(Default)]
struct Window {
    first_page: usize,
    bytes: Vec<u8>,
}

impl Window {
    fn pages(&self) -> usize {
        self.bytes.len() / PAGE
    }

    /// Writes back and drops the pages before `page`.
    fn retire_before(&mut self, file: &File, page: usize) -> io::Result<()> {
        let retire = page.saturating_sub(self.first_page).min(self.pages());
        if retire == 0 {
            return Ok(());
        }
        file.write_all_at(
            &self.bytes[..retire * PAGE],
            (self.first_page * PAGE) as u64,
        )?;
        self.bytes.drain(..retire * PAGE);
        self.first_page += retire;
        Ok(())
    }

    /// Entry `at`, its page read in if it is not in the window (a page that does not follow
    /// the window, after a probe wrapped around the table's end, starts a new window).
    fn entry(&mut self, file: &File, at: usize) -> io::Result<&mut [u8]> {
        let page = at / PAGE_ENTRIES;
        let end = self.first_page + self.pages();
        if page < self.first_page || page > end || self.bytes.is_empty() {
            self.retire_before(file, usize::MAX)?;
            self.first_page = page;
        }
        if page == self.first_page + self.pages() {
            let start = self.bytes.len();
            self.bytes.resize(start + PAGE, 0);
            file.read_exact_at(&mut self.bytes[start..], (page * PAGE) as u64)?;
        }
        let offset = (page - self.first_page) * PAGE + (at % PAGE_ENTRIES) * ENTRY;
        Ok(&mut self.bytes[offset..offset + ENTRY])
    }
}

/// Fixed-size records by slot, appended, in a file; the newest are buffered in memory.
pub(super) struct Records<const N: usize> {
    file: File,
    /// Records in the file.
    written: usize,
    /// Records after them, not written yet.
    buffer: Vec<u8>,
}

/// Bytes of records buffered before they are written.
const RECORD_BUFFER: usize = 64 * 1024;

impl<const N: usize> Records<N> {
    pub(super) fn new(dir: Option<&Path>) -> io::Result<Records<N>> {
        Ok(Records {
            file: temporary(dir)?,
            written: 0,
            buffer: Vec::with_capacity(RECORD_BUFFER),
        })
    }

    pub(super) fn push(&mut self, record: &[u8; N]) -> io::Result<()> {
        self.buffer.extend_from_slice(record);
        if self.buffer.len() >= RECORD_BUFFER {
            self.file
                .write_all_at(&self.buffer, (self.written * N) as u64)?;
            self.written += self.buffer.len() / N;
            self.buffer.clear();
        }
        Ok(())
    }

    /// Record `index`; it must have been pushed.
    pub(super) fn get(&self, index: usize) -> io::Result<[u8; N]> {
        let mut record = [0u8; N];
        if index >= self.written {
            let at = (index - self.written) * N;
            record.copy_from_slice(&self.buffer[at..at + N]);
        } else {
            self.file.read_exact_at(&mut record, (index * N) as u64)?;
        }
        Ok(record)
    }

    pub(super) fn len(&self) -> usize {
        self.written + self.buffer.len() / N
    }

    pub(super) fn bytes(&self) -> usize {
        self.len() * N
    }
}

fn read_u64(bytes: &[u8]) -> u64 {
    let mut buffer = [0u8; 8];
    buffer.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(buffer)
}

fn read_u32(bytes: &[u8]) -> u32 {
    let mut buffer = [0u8; 4];
    buffer.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Key 0, keys inserted twice (the first slot stays), more keys than the table was made for
    /// (it doubles) and more than one batch.
    #[test]
    fn the_first_slot_stays_through_batches_and_doubling() {
        let mut table = FirstSlots::new(None, 1000, 1.0).unwrap();
        table.batch = 700;
        // Two slots a key; slots 0 and 1 have key 0.
        let key = |i: u32| u64::from(i / 2).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        // Enough keys that the last doubling moves them in more than one group.
        let count = 2 * MOVE_GROUP as u32 + 5_000;
        for slot in 0..count {
            table.insert_first(key(slot), slot).unwrap();
        }
        assert!(table.pending.len() < table.batch && table.stored > 0);
        assert!(table.entries >= count as usize, "doubled");
        for slot in (0..count).step_by(7) {
            assert_eq!(table.get(key(slot)).unwrap(), Some(slot & !1), "{slot}");
        }
        assert_eq!(table.get(0x1234_5678).unwrap(), None);
    }

    /// Keys whose probes collide and wrap around the pending table's end are found, and come out
    /// sorted by where they go in the file, each once; a cleared table is empty.
    #[test]
    fn pending_keys_are_found_and_sorted_where_they_are() {
        let mut pending = Pending::for_keys(96);
        assert_eq!(pending.entries.len(), 128);
        // The same high bits (one home, the table's last entry) for the first half, so they
        // wrap; key 0 among them.
        let keys: Vec<u64> = (0..48u64)
            .map(|i| u64::MAX << 7 | i)
            .chain((0..48u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
            .collect();
        for (slot, key) in keys.iter().enumerate() {
            assert_eq!(pending.get(*key), None);
            pending.insert(*key, slot as u32);
        }
        assert!(pending.is_full());
        for (slot, key) in keys.iter().enumerate() {
            assert_eq!(pending.get(*key), Some(slot as u32));
        }
        let mask = 0xff;
        let sorted: Vec<(u64, u32)> = pending.sorted_by(mask).collect();
        assert_eq!(sorted.len(), keys.len());
        assert!(
            sorted
                .windows(2)
                .all(|w| w[0].0 as usize & mask <= w[1].0 as usize & mask)
        );
        let mut found: Vec<u32> = sorted.iter().map(|(_, slot)| *slot).collect();
        found.sort_unstable();
        assert_eq!(found, (0..keys.len() as u32).collect::<Vec<_>>());
        pending.clear();
        assert_eq!(pending.len(), 0);
        assert_eq!(pending.get(keys[0]), None);
    }

    #[test]
    fn a_probe_wraps_around_the_tables_end() {
        let mut table = FirstSlots::new(None, 10, 1.0).unwrap();
        let last = (table.entries - 1) as u64;
        for slot in 0..5u32 {
            table
                .insert_first(last | (u64::from(slot) << 32), slot)
                .unwrap();
        }
        table.write_pending().unwrap();
        for slot in 0..5u32 {
            assert_eq!(
                table.get(last | (u64::from(slot) << 32)).unwrap(),
                Some(slot)
            );
        }
    }

    #[test]
    fn records_read_back_from_the_buffer_and_the_file() {
        let mut records = Records::<8>::new(None).unwrap();
        let count = (RECORD_BUFFER / 8 * 3 + 5) as u64;
        for i in 0..count {
            records.push(&i.to_le_bytes()).unwrap();
        }
        assert_eq!(records.len() as u64, count);
        for i in [0, 1, count / 2, count - 1] {
            assert_eq!(u64::from_le_bytes(records.get(i as usize).unwrap()), i);
        }
    }
}
