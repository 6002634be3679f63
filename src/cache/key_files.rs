//! A build's manifest keys, in a file of their own next to the database.
//!
//! A build records the key of every (ticket, node) it used, chunk by chunk as tickets are written:
//! 33 bytes a key, about 230 bytes a ticket. Kept in sled, every chunk inserted stayed in the
//! process's memory until the build ended (sled holds what it writes in its page cache and evicts on
//! reads), 230 MB at a million tickets; written to a file, a chunk costs nothing once written.
//!
//! `keys/ID.keys` holds manifest `ID`'s keys and `keys/ID.kept` the keys it keeps without using
//! them (rejected draws, superseded duplicates), each as frames appended in ticket order: the chunk
//! number (u64), the frame's length (u32), then the chunk encoded with bincode. A frame that is cut
//! short (a build killed while writing) ends the file for readers; a build that did not finish has
//! no manifest anyway, and its files are what `unfinished` lists for gc to remove. The recorder
//! syncs the files before the build stores its manifest, so a stored manifest's keys are durable.
//! Caches from before keep their keys in sled trees, which are still read.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::CacheError;
use crate::key::ArtifactKey;

/// The folder of key files, inside the cache folder.
const FOLDER: &str = "keys";

/// One chunk of a manifest's keys: `keys[ticket * nodes + node]` for the chunk's tickets.
#[derive(Serialize, Deserialize)]
pub(super) struct ChunkKeys {
    pub(super) nodes: usize,
    pub(super) keys: Vec<Option<ArtifactKey>>,
}

/// Which of a manifest's two files.
#[derive(Clone, Copy)]
pub(super) enum KeyFile {
    /// The keys of every (ticket, node).
    Used,
    /// The keys kept without being used.
    Kept,
}

/// The key files of a cache folder.
#[derive(Clone)]
pub(super) struct KeyFiles {
    dir: PathBuf,
}

impl KeyFiles {
    pub(super) fn new(cache: &Path) -> KeyFiles {
        KeyFiles {
            dir: cache.join(FOLDER),
        }
    }

    fn path(&self, id: u64, file: KeyFile) -> PathBuf {
        let extension = match file {
            KeyFile::Used => "keys",
            KeyFile::Kept => "kept",
        };
        self.dir.join(format!("{id:020}.{extension}"))
    }

    fn error(&self, path: &Path, e: impl std::fmt::Display) -> CacheError {
        CacheError::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    }

    /// A writer of manifest `id`'s frames.
    pub(super) fn writer(&self, id: u64) -> Result<KeyFileWriter, CacheError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| self.error(&self.dir, e))?;
        let open = |file| -> Result<(PathBuf, File), CacheError> {
            let path = self.path(id, file);
            let handle = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&path)
                .map_err(|e| self.error(&path, e))?;
            Ok((path, handle))
        };
        Ok(KeyFileWriter {
            used: open(KeyFile::Used)?,
            kept: open(KeyFile::Kept)?,
            dir: self.dir.clone(),
        })
    }

    /// Every frame of manifest `id`'s `file`, in order: `each(chunk number, frame bytes)`. False
    /// when the manifest has no such file (its keys may be in the older trees).
    pub(super) fn frames(
        &self,
        id: u64,
        file: KeyFile,
        each: &mut dyn FnMut(u64, &[u8]),
    ) -> Result<bool, CacheError> {
        let path = self.path(id, file);
        let handle = match File::open(&path) {
            Ok(handle) => handle,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(self.error(&path, e)),
        };
        let mut reader = BufReader::new(handle);
        let mut bytes = Vec::new();
        while let Some((chunk, len)) = read_header(&mut reader) {
            bytes.resize(len, 0);
            if reader.read_exact(&mut bytes).is_err() {
                break;
            }
            each(chunk, &bytes);
        }
        Ok(true)
    }

    /// The frame of chunk `chunk` in manifest `id`'s keys, skipping the others unread. `None`
    /// when there is no such file (`Some(None)`: no such chunk).
    pub(super) fn frame(&self, id: u64, chunk: u64) -> Result<Option<Option<Vec<u8>>>, CacheError> {
        let path = self.path(id, KeyFile::Used);
        let handle = match File::open(&path) {
            Ok(handle) => handle,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.error(&path, e)),
        };
        let mut reader = BufReader::new(handle);
        while let Some((number, len)) = read_header(&mut reader) {
            if number == chunk {
                let mut bytes = vec![0; len];
                return Ok(Some(reader.read_exact(&mut bytes).ok().map(|()| bytes)));
            }
            if reader.seek(SeekFrom::Current(len as i64)).is_err() {
                break;
            }
        }
        Ok(Some(None))
    }

    /// Removes manifest `id`'s files.
    pub(super) fn remove(&self, id: u64) -> Result<(), CacheError> {
        for file in [KeyFile::Used, KeyFile::Kept] {
            let path = self.path(id, file);
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(self.error(&path, e));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The ids that have key files.
    pub(super) fn ids(&self) -> Result<Vec<u64>, CacheError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.error(&self.dir, e)),
        };
        let mut ids: Vec<u64> = entries
            .filter_map(|entry| {
                let name = entry.ok()?.file_name();
                name.to_str()?.strip_suffix(".keys")?.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }
}

/// A chunk encoded with bincode, or the cache's error.
pub(super) fn encode_chunk<T: Serialize>(value: &T, path: &Path) -> Result<Vec<u8>, CacheError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(|e| CacheError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// A frame's header, or `None` at the end of the file (or a header cut short).
fn read_header(reader: &mut impl Read) -> Option<(u64, usize)> {
    let mut header = [0u8; 12];
    reader.read_exact(&mut header).ok()?;
    let (chunk, len) = header.split_at(8);
    let chunk = u64::from_le_bytes(chunk.try_into().ok()?);
    let len = u32::from_le_bytes(len.try_into().ok()?);
    Some((chunk, len as usize))
}

/// Appends frames to a manifest's two files.
pub(super) struct KeyFileWriter {
    used: (PathBuf, File),
    kept: (PathBuf, File),
    dir: PathBuf,
}

impl KeyFileWriter {
    /// Appends one frame (chunk `chunk`, `bytes`) to `file`.
    pub(super) fn append(
        &mut self,
        file: KeyFile,
        chunk: u64,
        bytes: &[u8],
    ) -> Result<(), CacheError> {
        let (path, handle) = match file {
            KeyFile::Used => &mut self.used,
            KeyFile::Kept => &mut self.kept,
        };
        let len = u32::try_from(bytes.len()).map_err(|_| CacheError::Io {
            path: path.clone(),
            reason: format!("a chunk of {} bytes is too large", bytes.len()),
        })?;
        let mut frame = Vec::with_capacity(12 + bytes.len());
        frame.extend_from_slice(&chunk.to_le_bytes());
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(bytes);
        handle.write_all(&frame).map_err(|e| CacheError::Io {
            path: path.clone(),
            reason: e.to_string(),
        })
    }

    /// Makes both files and their folder entry durable.
    pub(super) fn sync(&mut self) -> Result<(), CacheError> {
        for (path, handle) in [&self.used, &self.kept] {
            handle.sync_all().map_err(|e| CacheError::Io {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        }
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| CacheError::Io {
                path: self.dir.clone(),
                reason: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_read_back_in_order_and_a_cut_frame_ends_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = KeyFiles::new(dir.path());
        let mut writer = files.writer(7).unwrap();
        writer.append(KeyFile::Used, 0, b"first").unwrap();
        writer.append(KeyFile::Used, 1, b"second").unwrap();
        writer.append(KeyFile::Kept, 1, b"kept").unwrap();
        writer.sync().unwrap();
        let mut seen = Vec::new();
        assert!(
            files
                .frames(7, KeyFile::Used, &mut |chunk, bytes| seen
                    .push((chunk, bytes.to_vec())))
                .unwrap()
        );
        assert_eq!(seen, vec![(0, b"first".to_vec()), (1, b"second".to_vec())]);
        assert_eq!(files.frame(7, 1).unwrap(), Some(Some(b"second".to_vec())));
        assert_eq!(files.frame(7, 2).unwrap(), Some(None));
        assert_eq!(files.frame(8, 0).unwrap(), None);
        assert_eq!(files.ids().unwrap(), vec![7]);

        // A frame cut short by a kill: the frames before it are read, it is not.
        let path = files.path(7, KeyFile::Used);
        let len = std::fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 2)
            .unwrap();
        let mut count = 0;
        files
            .frames(7, KeyFile::Used, &mut |_, _| count += 1)
            .unwrap();
        assert_eq!(count, 1);
        files.remove(7).unwrap();
        assert!(files.ids().unwrap().is_empty());
        assert!(!files.frames(7, KeyFile::Kept, &mut |_, _| {}).unwrap());
    }
}
