//! JSON-lines logs: one JSON value per line, appended in whole groups with one write and one
//! fsync.
//!
//! The one torn-tail policy: a last line without its newline is an append a crash cut short.
//! Its fsync never returned, so nobody was told it was written; it is cut off (under the
//! writer's lock, before the next append) and readers skip it. Every other line is whole.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// How much of a file is read at a time when scanning it backwards.
const CHUNK: u64 = 64 * 1024;

/// Opens `path` for appending (creating it and its directory) and cuts a torn last line off.
/// Hold the file's lock (or the caller's) from here to the append when several writers share
/// the file.
pub fn open_for_append(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    Ok(file)
}

/// Cuts a torn last line off `file` (see the module doc); returns how many bytes were cut.
pub fn cut_torn_tail(file: &mut File, path: &Path) -> std::io::Result<u64> {
    let len = file.metadata()?.len();
    if len == 0 || last_byte(file, len)? == b'\n' {
        return Ok(0);
    }
    let keep = match newline_before(file, len)? {
        Some(at) => at + 1,
        None => 0,
    };
    tracing::warn!(path = %path.display(), bytes = len - keep, "jsonl.torn-tail");
    file.set_len(keep)?;
    file.sync_data()?;
    Ok(len - keep)
}

/// The last whole line of `file` (without its newline), however long; `None` when empty.
/// Call after [`cut_torn_tail`].
pub fn last_line(file: &mut File) -> std::io::Result<Option<Vec<u8>>> {
    let mut end = file.metadata()?.len();
    // Skip trailing newlines (an empty line carries nothing).
    while end > 0 && last_byte(file, end)? == b'\n' {
        end -= 1;
    }
    if end == 0 {
        return Ok(None);
    }
    let start = newline_before(file, end)?.map_or(0, |at| at + 1);
    let mut line = vec![0; usize::try_from(end - start).map_err(std::io::Error::other)?];
    file.seek(SeekFrom::Start(start))?;
    file.read_exact(&mut line)?;
    Ok(Some(line))
}

/// Appends `lines` (each already ending in a newline) with one write, then fsyncs.
pub fn append_bytes(file: &mut File, lines: &[u8]) -> std::io::Result<()> {
    debug_assert!(lines.is_empty() || lines.ends_with(b"\n"));
    file.write_all(lines)?;
    file.sync_data()
}

/// Encodes `values` as lines, ready for [`append_bytes`].
pub fn encode<T: Serialize>(values: impl IntoIterator<Item = T>) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    for value in values {
        serde_json::to_writer(&mut bytes, &value)?;
        bytes.push(b'\n');
    }
    Ok(bytes)
}

/// Appends `values` to `path` durably: open, cut a torn tail, one write, one fsync. The caller
/// serialises concurrent writers.
pub fn append<T: Serialize>(
    path: &Path,
    values: impl IntoIterator<Item = T>,
) -> std::io::Result<()> {
    let bytes = encode(values)?;
    if bytes.is_empty() {
        return Ok(());
    }
    let mut file = open_for_append(path)?;
    cut_torn_tail(&mut file, path)?;
    append_bytes(&mut file, &bytes)
}

/// Every whole line of `path` decoded as `T`, in order; a missing file has none. A torn last
/// line is skipped; so is (with a warning) a whole line that does not decode — the older
/// policy ended torn lines instead of cutting them, and such a fragment must not stop a
/// reader.
pub fn read<T: DeserializeOwned>(path: &Path) -> std::io::Result<Vec<T>> {
    let Some(bytes) = crate::read_if_exists(path)? else {
        return Ok(Vec::new());
    };
    let whole = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(at) => &bytes[..=at],
        None => &[][..],
    };
    let mut values = Vec::new();
    for (n, line) in whole.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice(line) {
            Ok(v) => values.push(v),
            Err(e) => {
                tracing::warn!(path = %path.display(), line = n + 1, error = %e, "jsonl.unreadable-line")
            }
        }
    }
    Ok(values)
}

/// Replaces `path` with `values` atomically ([`crate::write_atomic`]); removes it when there
/// are none.
pub fn rewrite<T: Serialize>(
    path: &Path,
    values: impl IntoIterator<Item = T>,
) -> std::io::Result<()> {
    let bytes = encode(values)?;
    if bytes.is_empty() {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => crate::sync_parent(path).or(Ok(())),
        };
    }
    crate::write_atomic(path, &bytes)
}

fn last_byte(file: &mut File, len: u64) -> std::io::Result<u8> {
    let mut byte = [0u8; 1];
    file.seek(SeekFrom::Start(len - 1))?;
    file.read_exact(&mut byte)?;
    Ok(byte[0])
}

/// The offset of the last newline before `end`, scanning backwards a chunk at a time.
fn newline_before(file: &mut File, end: u64) -> std::io::Result<Option<u64>> {
    let mut upto = end;
    let mut chunk = Vec::new();
    while upto > 0 {
        let from = upto.saturating_sub(CHUNK);
        chunk.resize(
            usize::try_from(upto - from).map_err(std::io::Error::other)?,
            0,
        );
        file.seek(SeekFrom::Start(from))?;
        file.read_exact(&mut chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(from + i as u64));
        }
        upto = from;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn torn(path: &Path, fragment: &[u8]) {
        OpenOptions::new()
            .append(true)
            .open(path)
            .unwrap()
            .write_all(fragment)
            .unwrap();
    }

    #[test]
    fn a_torn_last_line_is_skipped_by_readers_and_cut_before_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        append(&path, [1, 2]).unwrap();
        torn(&path, b"{\"half");
        assert_eq!(read::<i32>(&path).unwrap(), [1, 2]);
        append(&path, [3]).unwrap();
        assert_eq!(read::<i32>(&path).unwrap(), [1, 2, 3]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n2\n3\n");
    }

    #[test]
    fn the_last_line_is_found_at_any_length_and_any_chunk_boundary() {
        let dir = tempfile::tempdir().unwrap();
        for size in [
            0usize,
            1,
            100,
            CHUNK as usize - 3,
            CHUNK as usize,
            3 * CHUNK as usize + 7,
        ] {
            let path = dir.path().join(format!("l{size}.jsonl"));
            let long = "x".repeat(size);
            append(&path, ["first".to_owned(), long.clone()]).unwrap();
            // A torn line longer than a chunk, too.
            torn(&path, "y".repeat(2 * CHUNK as usize).as_bytes());
            let mut file = open_for_append(&path).unwrap();
            cut_torn_tail(&mut file, &path).unwrap();
            let last = last_line(&mut file).unwrap().unwrap();
            assert_eq!(last, serde_json::to_vec(&long).unwrap(), "size {size}");
        }
    }

    #[test]
    fn a_file_that_is_all_torn_is_emptied_and_a_missing_one_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        assert!(read::<i32>(&path).unwrap().is_empty());
        std::fs::write(&path, b"{\"never finished").unwrap();
        let mut file = open_for_append(&path).unwrap();
        assert_eq!(cut_torn_tail(&mut file, &path).unwrap(), 16);
        assert!(last_line(&mut file).unwrap().is_none());
    }

    #[test]
    fn rewriting_with_nothing_removes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.jsonl");
        rewrite(&path, [1]).unwrap();
        assert_eq!(read::<i32>(&path).unwrap(), [1]);
        rewrite(&path, Vec::<i32>::new()).unwrap();
        assert!(!path.exists());
    }
}
