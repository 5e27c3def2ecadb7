//! A writer for the `newc` cpio format the kernel unpacks as initramfs.
//!
//! Written here rather than with the `cpio` tool so that the archive is
//! reproducible (fixed owners and times, sorted entries) and can hold device
//! nodes such as `/dev/console` without root privileges.

use std::io::{self, Write};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// One entry of the archive.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    Symlink {
        path: String,
        target: String,
    },
    CharDev {
        path: String,
        mode: u32,
        major: u32,
        minor: u32,
    },
}

impl Entry {
    pub fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. }
            | Entry::File { path, .. }
            | Entry::Symlink { path, .. }
            | Entry::CharDev { path, .. } => path,
        }
    }
}

/// Write `entries` (in the given order) as a newc archive with every
/// timestamp set to `mtime` and every owner root.
pub fn write_newc<W: Write>(out: &mut W, entries: &[Entry], mtime: u64) -> io::Result<u64> {
    let mut w = Counter { inner: out, n: 0 };
    for (ino, e) in entries.iter().enumerate() {
        let (mode, data, rmaj, rmin): (u32, &[u8], u32, u32) = match e {
            Entry::Dir { mode, .. } => (S_IFDIR | mode, &[], 0, 0),
            Entry::File { mode, data, .. } => (S_IFREG | mode, data, 0, 0),
            Entry::Symlink { target, .. } => (S_IFLNK | 0o777, target.as_bytes(), 0, 0),
            Entry::CharDev {
                mode, major, minor, ..
            } => (S_IFCHR | mode, &[], *major, *minor),
        };
        let nlink = if matches!(e, Entry::Dir { .. }) { 2 } else { 1 };
        header(
            &mut w,
            ino as u32 + 1,
            mode,
            nlink,
            mtime,
            data.len() as u32,
            rmaj,
            rmin,
            e.path(),
        )?;
        w.write_all(data)?;
        pad4(&mut w)?;
    }
    header(&mut w, 0, 0, 1, 0, 0, 0, 0, "TRAILER!!!")?;
    Ok(w.n)
}

#[allow(clippy::too_many_arguments)]
fn header<W: Write>(
    w: &mut Counter<W>,
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u64,
    filesize: u32,
    rdevmajor: u32,
    rdevminor: u32,
    name: &str,
) -> io::Result<()> {
    let name = name.trim_start_matches('/');
    let namesize = name.len() as u32 + 1;
    write!(
        w,
        "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
        ino, mode, 0, 0, nlink, mtime as u32, filesize, 0, 0, rdevmajor, rdevminor, namesize, 0
    )?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad4(w)
}

fn pad4<W: Write>(w: &mut Counter<W>) -> io::Result<()> {
    let pad = (4 - (w.n % 4)) % 4;
    w.write_all(&[0u8; 3][..pad as usize])
}

struct Counter<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Entry> {
        vec![
            Entry::Dir {
                path: "dev".into(),
                mode: 0o755,
            },
            Entry::CharDev {
                path: "dev/console".into(),
                mode: 0o600,
                major: 5,
                minor: 1,
            },
            Entry::File {
                path: "init".into(),
                mode: 0o755,
                data: b"#!/bin/sh\n".to_vec(),
            },
            Entry::Symlink {
                path: "bin/sh".into(),
                target: "busybox".into(),
            },
        ]
    }

    #[test]
    fn same_input_same_bytes() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        write_newc(&mut a, &sample(), 1_700_000_000).unwrap();
        write_newc(&mut b, &sample(), 1_700_000_000).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len() % 4, 0);
    }

    #[test]
    fn the_cpio_tool_reads_it() {
        if !maculaos_runner::have("cpio") {
            eprintln!("cpio not installed; skipping the cross-check");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.cpio");
        let mut data = Vec::new();
        write_newc(&mut data, &sample(), 1_700_000_000).unwrap();
        std::fs::write(&archive, &data).unwrap();
        let list = maculaos_runner::Cmd::new("cpio")
            .args(["-itv", "-F"])
            .arg(&archive)
            .output()
            .unwrap();
        assert!(list.contains("dev/console"), "{list}");
        assert!(list.contains("bin/sh -> busybox"), "{list}");
        assert!(list.contains("init"), "{list}");
    }
}
