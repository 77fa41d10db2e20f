//! Writes a directory tree as the tar stream `docker import` takes: paths relative to the root,
//! owners, permissions (setuid and friends included) and mtimes kept, symlinks stored as links,
//! hard links stored once, and device nodes, FIFOs and sockets left out (Docker gives every
//! container its own /dev). Entries come in sorted order, and the walk does not leave the root's
//! filesystem.

use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tar::{Builder, EntryType, Header, HeaderMode};

/// What went into an archive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArchiveSummary {
    /// Entries written (directories, files, links).
    pub entries: u64,
    /// Bytes of file content written (before tar's padding).
    pub content_bytes: u64,
    /// Device nodes, FIFOs and sockets left out.
    pub skipped_special: u64,
}

/// Writes the tree under `root` (not `root` itself) as a tar archive into `out`, finishes the
/// archive, and hands `out` back.
pub fn write_tree<W: Write>(root: &Path, out: W) -> io::Result<(W, ArchiveSummary)> {
    let root_meta = fs::symlink_metadata(root).map_err(|e| at(root, e))?;
    if !root_meta.is_dir() {
        return Err(at(root, io::Error::other("not a directory")));
    }
    let mut writer = TreeWriter {
        builder: Builder::new(Fuse {
            inner: out,
            blown: false,
        }),
        root,
        root_dev: root_meta.dev(),
        hard_links: HashMap::new(),
        summary: ArchiveSummary::default(),
    };
    if let Err(err) = writer.dir_contents(root) {
        // The builder finishes the archive when dropped; a blown fuse keeps that end-of-archive
        // marker from making a partial archive look complete.
        writer.builder.get_mut().blown = true;
        return Err(err);
    }
    let summary = writer.summary;
    let fuse = writer.builder.into_inner()?;
    Ok((fuse.inner, summary))
}

/// Passes writes through until blown, then refuses them all.
struct Fuse<W> {
    inner: W,
    blown: bool,
}

impl<W: Write> Write for Fuse<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.blown {
            return Err(io::Error::other("the archive was abandoned"));
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.blown {
            return Err(io::Error::other("the archive was abandoned"));
        }
        self.inner.flush()
    }
}

struct TreeWriter<'a, W: Write> {
    builder: Builder<Fuse<W>>,
    root: &'a Path,
    root_dev: u64,
    /// First archive path of each multiply-linked file, by (device, inode).
    hard_links: HashMap<(u64, u64), PathBuf>,
    summary: ArchiveSummary,
}

impl<W: Write> TreeWriter<'_, W> {
    fn dir_contents(&mut self, dir: &Path) -> io::Result<()> {
        let mut children = fs::read_dir(dir)
            .map_err(|e| at(dir, e))?
            .map(|e| e.map(|e| e.path()))
            .collect::<io::Result<Vec<_>>>()
            .map_err(|e| at(dir, e))?;
        children.sort();
        for child in children {
            self.entry(&child)?;
        }
        Ok(())
    }

    fn entry(&mut self, path: &Path) -> io::Result<()> {
        let meta = fs::symlink_metadata(path).map_err(|e| at(path, e))?;
        let name = path
            .strip_prefix(self.root)
            .map_err(|_| at(path, io::Error::other("outside the archived root")))?
            .to_path_buf();
        let kind = meta.file_type();
        let mut header = header_for(&meta);
        if kind.is_dir() {
            header.set_entry_type(EntryType::Directory);
            header.set_size(0);
            self.builder
                .append_data(&mut header, &name, io::empty())
                .map_err(|e| at(path, e))?;
            self.summary.entries += 1;
            if meta.dev() == self.root_dev {
                self.dir_contents(path)?;
            }
        } else if kind.is_symlink() {
            let target = fs::read_link(path).map_err(|e| at(path, e))?;
            header.set_entry_type(EntryType::Symlink);
            header.set_size(0);
            self.builder
                .append_link(&mut header, &name, &target)
                .map_err(|e| at(path, e))?;
            self.summary.entries += 1;
        } else if kind.is_file() {
            self.file(path, name, &meta, header)?;
        } else if kind.is_block_device()
            || kind.is_char_device()
            || kind.is_fifo()
            || kind.is_socket()
        {
            self.summary.skipped_special += 1;
        }
        Ok(())
    }

    fn file(
        &mut self,
        path: &Path,
        name: PathBuf,
        meta: &Metadata,
        mut header: Header,
    ) -> io::Result<()> {
        let key = (meta.dev(), meta.ino());
        if meta.nlink() > 1 {
            if let Some(first) = self.hard_links.get(&key) {
                header.set_entry_type(EntryType::Link);
                header.set_size(0);
                let first = first.clone();
                self.builder
                    .append_link(&mut header, &name, &first)
                    .map_err(|e| at(path, e))?;
                self.summary.entries += 1;
                return Ok(());
            }
            self.hard_links.insert(key, name.clone());
        }
        let size = meta.len();
        header.set_entry_type(EntryType::Regular);
        header.set_size(size);
        let file = File::open(path).map_err(|e| at(path, e))?;
        let exact = ExactReader {
            inner: file,
            left: size,
        };
        self.builder
            .append_data(&mut header, &name, exact)
            .map_err(|e| at(path, e))?;
        self.summary.entries += 1;
        self.summary.content_bytes += size;
        Ok(())
    }
}

/// A GNU header with the entry's owner, permission bits and mtime.
fn header_for(meta: &Metadata) -> Header {
    let mut header = Header::new_gnu();
    header.set_metadata_in_mode(meta, HeaderMode::Complete);
    header.set_mode(meta.mode() & 0o7777);
    header
}

/// Reads exactly `left` bytes: a file that shrank while archived is an error, not a silently
/// corrupt archive (tar writes the size in the header before the content).
struct ExactReader<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was archived",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Prefixes an I/O error with the path it concerns.
fn at(path: &Path, err: io::Error) -> io::Error {
    io::Error::new(err.kind(), format!("{}: {err}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::{symlink, PermissionsExt};

    use super::*;

    struct Seen {
        kind: EntryType,
        mode: u32,
        link: Option<PathBuf>,
        data: Vec<u8>,
    }

    fn read_back(bytes: &[u8]) -> BTreeMap<String, Seen> {
        let mut archive = tar::Archive::new(bytes);
        let mut seen = BTreeMap::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let path = entry
                .path()
                .expect("path")
                .to_string_lossy()
                .trim_end_matches('/')
                .to_owned();
            let header = entry.header().clone();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).expect("data");
            seen.insert(
                path,
                Seen {
                    kind: header.entry_type(),
                    mode: header.mode().expect("mode"),
                    link: entry.link_name().expect("link").map(|l| l.into_owned()),
                    data,
                },
            );
        }
        seen
    }

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("usr/bin")).expect("mkdir");
        fs::create_dir_all(root.join("etc/deep/er")).expect("mkdir");
        fs::write(root.join("usr/bin/python3.11"), b"#!binary").expect("write");
        fs::set_permissions(
            root.join("usr/bin/python3.11"),
            fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        fs::write(root.join("usr/bin/su"), b"su").expect("write");
        fs::set_permissions(root.join("usr/bin/su"), fs::Permissions::from_mode(0o4755))
            .expect("chmod");
        fs::write(root.join("etc/shadow"), b"secret").expect("write");
        fs::set_permissions(root.join("etc/shadow"), fs::Permissions::from_mode(0o640))
            .expect("chmod");
        fs::set_permissions(root.join("etc/deep"), fs::Permissions::from_mode(0o700))
            .expect("chmod");
        symlink("python3.11", root.join("usr/bin/python3")).expect("symlink");
        symlink("usr/bin", root.join("bin")).expect("symlink");
        symlink("/nonexistent/dangling", root.join("etc/dangling")).expect("symlink");
        fs::hard_link(
            root.join("usr/bin/python3.11"),
            root.join("usr/bin/zz-python-hard"),
        )
        .expect("link");
        let long = "d".repeat(120);
        fs::create_dir_all(root.join(&long)).expect("mkdir");
        fs::write(root.join(&long).join("f".repeat(120)), b"long").expect("write");
        nix::unistd::mkfifo(
            &root.join("etc/fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .expect("mkfifo");
        dir
    }

    #[test]
    fn archives_files_links_and_modes() {
        let dir = tree();
        let (bytes, summary) = write_tree(dir.path(), Vec::new()).expect("archived");
        let seen = read_back(&bytes);

        let py = &seen["usr/bin/python3.11"];
        assert_eq!(py.kind, EntryType::Regular);
        assert_eq!(py.mode, 0o755);
        assert_eq!(py.data, b"#!binary");
        assert_eq!(seen["usr/bin/su"].mode, 0o4755, "setuid bit kept");
        assert_eq!(seen["etc/shadow"].mode, 0o640);
        assert_eq!(seen["etc/deep"].kind, EntryType::Directory);
        assert_eq!(seen["etc/deep"].mode, 0o700);
        assert_eq!(seen["etc/deep/er"].kind, EntryType::Directory);

        let link = &seen["usr/bin/python3"];
        assert_eq!(link.kind, EntryType::Symlink);
        assert_eq!(link.link.as_deref(), Some(Path::new("python3.11")));
        assert_eq!(seen["bin"].link.as_deref(), Some(Path::new("usr/bin")));
        assert_eq!(
            seen["bin"].kind,
            EntryType::Symlink,
            "directory symlinks are not followed"
        );
        assert!(!seen.contains_key("bin/python3.11"));
        assert_eq!(
            seen["etc/dangling"].link.as_deref(),
            Some(Path::new("/nonexistent/dangling"))
        );

        // Sorted walk: python3.11 comes first and carries the content; the second name links.
        let hard = &seen["usr/bin/zz-python-hard"];
        assert_eq!(hard.kind, EntryType::Link);
        assert_eq!(hard.link.as_deref(), Some(Path::new("usr/bin/python3.11")));

        let long_path = format!("{}/{}", "d".repeat(120), "f".repeat(120));
        assert_eq!(seen[&long_path].data, b"long", "GNU long names");

        assert!(!seen.contains_key("etc/fifo"), "special files are left out");
        assert_eq!(summary.skipped_special, 1);
        assert_eq!(summary.entries as usize, seen.len());
        assert!(!seen.keys().any(|k| k.starts_with('/') || k.is_empty()));
    }

    #[test]
    fn hard_links_are_stored_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("a"), b"payload").expect("write");
        fs::hard_link(dir.path().join("a"), dir.path().join("b")).expect("link");
        let (bytes, summary) = write_tree(dir.path(), Vec::new()).expect("archived");
        let seen = read_back(&bytes);
        assert_eq!(seen["a"].kind, EntryType::Regular);
        assert_eq!(seen["a"].data, b"payload");
        assert_eq!(seen["b"].kind, EntryType::Link);
        assert_eq!(seen["b"].link.as_deref(), Some(Path::new("a")));
        assert_eq!(summary.content_bytes, 7);
    }

    #[test]
    fn unpacks_to_the_same_tree() {
        let dir = tree();
        let (bytes, _) = write_tree(dir.path(), Vec::new()).expect("archived");
        let out = tempfile::tempdir().expect("tempdir");
        let mut archive = tar::Archive::new(bytes.as_slice());
        archive.set_preserve_permissions(true);
        archive.unpack(out.path()).expect("unpacked");
        let meta = fs::symlink_metadata(out.path().join("usr/bin/su")).expect("su");
        assert_eq!(meta.mode() & 0o7777, 0o4755);
        assert_eq!(
            fs::read_link(out.path().join("bin")).expect("link"),
            Path::new("usr/bin")
        );
        let a = fs::metadata(out.path().join("usr/bin/python3.11")).expect("a");
        let b = fs::metadata(out.path().join("usr/bin/zz-python-hard")).expect("b");
        assert_eq!(a.ino(), b.ino(), "hard link restored");
    }

    #[test]
    fn refuses_a_non_directory_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f");
        fs::write(&file, "x").expect("write");
        let err = write_tree(&file, Vec::new()).expect_err("not a dir");
        assert!(err.to_string().contains("not a directory"));
    }

    /// Accepts `budget` bytes, fails the next write once, then accepts again, counting the
    /// bytes accepted after the failure.
    struct FailsOnce {
        budget: usize,
        failed: bool,
        after_failure: std::rc::Rc<std::cell::Cell<usize>>,
    }

    impl Write for FailsOnce {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.failed {
                self.after_failure.set(self.after_failure.get() + buf.len());
                return Ok(buf.len());
            }
            if self.budget == 0 {
                self.failed = true;
                return Err(io::Error::other("sink hiccup"));
            }
            let n = buf.len().min(self.budget);
            self.budget -= n;
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failed_walk_does_not_finish_the_archive() {
        let dir = tree();
        let after_failure = std::rc::Rc::new(std::cell::Cell::new(0));
        let sink = FailsOnce {
            budget: 2048,
            failed: false,
            after_failure: after_failure.clone(),
        };
        let err = write_tree(dir.path(), sink).err().expect("the sink fails");
        assert!(err.to_string().contains("sink hiccup"), "{err}");
        assert_eq!(
            after_failure.get(),
            0,
            "an end-of-archive marker followed the failure"
        );
    }

    #[test]
    fn shrinking_files_fail_loudly() {
        let mut reader = ExactReader {
            inner: &b"abc"[..],
            left: 5,
        };
        let mut out = Vec::new();
        let err = io::copy(&mut reader, &mut out).expect_err("short");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
