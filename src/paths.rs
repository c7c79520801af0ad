//! Safe with users' files: which paths are the same file, and how an output path is taken.
//!
//! Paths are compared by what they name, never by spelling: a file that exists is its device
//! and inode (so `v.mp4`, `dir/../v.mp4`, a symlink to it and a hard link are one file); a
//! path that does not exist yet is its canonical directory plus its name. Every command checks
//! its outputs against its inputs and each other with [`check_distinct`] before any work.
//!
//! An output is *claimed* before any work starts ([`Claim::take`]), the way a careful Unix
//! tool opens a file it will write:
//! - a new path is created with `O_CREAT|O_EXCL|O_NOFOLLOW`, so a symlink planted at the name
//!   (or a file that appeared meanwhile) is never followed or truncated;
//! - an existing path is taken only when the user said `--overwrite`, and only if it is a
//!   regular file that this process may open for writing (`O_NOFOLLOW`, not truncated: it
//!   keeps its content until the first frame is ready);
//! - right before the encoder opens the path, [`Claim::verify`] checks that the name still
//!   leads to the claimed inode and is not a symlink;
//! - on a failed start only what this run created is removed ([`Claim::abandon`]).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// What a path names, for "is this the same file" questions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Identity {
    /// An existing file (symlinks followed): device and inode.
    Inode(u64, u64),
    /// A path that does not exist yet: canonical directory + file name.
    Path(PathBuf),
}

/// The identity of `p`; `None` when neither it nor its directory can be resolved (then it
/// cannot collide with anything that exists, and opening it fails with its own error).
pub(crate) fn identity(p: &Path) -> Option<Identity> {
    match std::fs::metadata(p) {
        Ok(m) => Some(Identity::Inode(m.dev(), m.ino())),
        Err(_) => {
            let name = p.file_name()?;
            let dir = parent(p);
            let dir = std::fs::canonicalize(dir).ok()?;
            Some(Identity::Path(dir.join(name)))
        }
    }
}

/// The directory a path lives in (`.` for a bare name).
pub(crate) fn parent(p: &Path) -> &Path {
    p.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// How a command uses a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Read: a video, image or model.
    Input,
    /// Written from the start: a recording, a JSON file, a model.
    Output,
    /// Appended by line; several sources may share one log.
    Log,
}

/// One path a command reads or writes, with the words that name it in an error.
pub struct Named<'a> {
    pub what: String,
    pub path: &'a Path,
    pub used: Use,
}

impl<'a> Named<'a> {
    pub fn new(what: impl Into<String>, path: &'a Path, used: Use) -> Named<'a> {
        Named {
            what: what.into(),
            path,
            used,
        }
    }
}

/// Fails when an output is the same file as an input or as another output (a log shared by
/// several sources excepted), whatever the spelling. The message names both uses.
pub(crate) fn check_distinct(items: &[Named]) -> Result<(), String> {
    let ids: Vec<Option<Identity>> = items.iter().map(|n| identity(n.path)).collect();
    for (i, a) in items.iter().enumerate() {
        for (j, b) in items.iter().enumerate().skip(i + 1) {
            let writes = a.used != Use::Input || b.used != Use::Input;
            let shared_log = a.used == Use::Log && b.used == Use::Log;
            if !writes || shared_log || ids[i].is_none() || ids[i] != ids[j] {
                continue;
            }
            let same = if a.path == b.path {
                format!("{}", a.path.display())
            } else {
                format!("{} and {} are the same file", a.path.display(), b.path.display())
            };
            return Err(format!(
                "{} and {} would be one file ({same}); gradcamd would write over what it reads or writes; name another output path",
                a.what, b.what
            ));
        }
    }
    Ok(())
}

/// Why an output could not be claimed.
#[derive(Debug)]
pub(crate) enum ClaimError {
    /// An existing file, and no `--overwrite`.
    Exists,
    /// Anything else, in words.
    Other(String),
}

impl std::fmt::Display for ClaimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClaimError::Exists => write!(
                f,
                "it exists; pass --overwrite (or set [output] overwrite = true) to replace it"
            ),
            ClaimError::Other(s) => f.write_str(s),
        }
    }
}

/// An output path this run holds: created by it, or an existing file it may overwrite.
#[derive(Debug)]
pub(crate) struct Claim {
    pub path: PathBuf,
    /// This run made the file (and may remove it if it never writes a frame).
    pub created: bool,
    /// Held open: the identity to check, and the file system to watch for space.
    file: File,
    dev: u64,
    ino: u64,
}

impl Claim {
    /// Claims `path` for writing (see the module doc).
    pub(crate) fn take(path: &Path, overwrite: bool) -> Result<Claim, ClaimError> {
        let words = |e: io::Error| ClaimError::Other(describe(&e, path));
        let new = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path);
        let (file, created) = match new {
            Ok(f) => (f, true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let m = std::fs::symlink_metadata(path).map_err(words)?;
                let t = m.file_type();
                if t.is_dir() {
                    return Err(ClaimError::Other("it is a directory".into()));
                }
                if t.is_symlink() {
                    return Err(ClaimError::Other(
                        "it is a symbolic link, which gradcamd does not follow for an output; name the file itself".into(),
                    ));
                }
                if !t.is_file() {
                    return Err(ClaimError::Other(format!(
                        "it is not a regular file ({}); name a file",
                        kind_of(&t)
                    )));
                }
                if !overwrite {
                    return Err(ClaimError::Exists);
                }
                // Not truncated here: it keeps its content until the first frame is ready.
                let f = OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                    .open(path)
                    .map_err(words)?;
                (f, false)
            }
            Err(e) => return Err(words(e)),
        };
        let m = file.metadata().map_err(words)?;
        Ok(Claim {
            path: path.to_path_buf(),
            created,
            file,
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    /// Checks, right before the path is opened by name, that it still leads to the claimed
    /// file and is no symlink: nothing was swapped in since start-up.
    pub(crate) fn verify(&self) -> Result<(), String> {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.file_type().is_file() && m.dev() == self.dev && m.ino() == self.ino => Ok(()),
            Ok(_) => Err(format!(
                "{} was replaced since start-up; not writing through it",
                self.path.display()
            )),
            Err(e) => Err(describe(&e, &self.path)),
        }
    }

    /// The claimed file, open for writing.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Bytes this process may still write on the output's file system.
    pub(crate) fn space_left(&self) -> Option<u64> {
        space_left(&self.file)
    }

    /// A name that opens exactly the claimed file, whatever happens to its path since:
    /// `/proc/self/fd/N`. `None` without procfs.
    pub(crate) fn fd_path(&self) -> Option<PathBuf> {
        use std::os::fd::AsRawFd;
        let p = PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()));
        p.exists().then_some(p)
    }

    /// Starts writing the file's dirty pages to the disk, without waiting: a power cut then
    /// loses the last seconds, not the half minute the kernel may hold back.
    pub(crate) fn start_writeback(&self) {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain syscall on a descriptor we own; the result is advisory.
        unsafe {
            libc::sync_file_range(self.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }

    /// Size of the claimed file now (what the encoder has written).
    pub(crate) fn size(&self) -> u64 {
        self.file.metadata().map_or(0, |m| m.len())
    }

    /// Gives the path up unused: removes the file if this run created it and nothing was
    /// written to it (still the same, empty inode); leaves anything else alone.
    pub(crate) fn abandon(self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino && m.len() == 0);
        if self.created && ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A new directory under the system's temporary directory that only this user can enter,
/// for scratch files: nothing another user planted (a symlink at a guessable name) is in it.
pub(crate) fn private_temp_dir(tag: &str) -> io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::temp_dir();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for k in 0..100u32 {
        let dir = base.join(format!("gradcamd-{tag}-{}-{nanos}-{k}", std::process::id()));
        // create_dir fails when anything is there already: the directory is new, and ours.
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free temporary directory name"))
}

/// Bytes an unprivileged writer may still use on the file system holding `f`.
pub(crate) fn space_left(f: &File) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let mut s = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: fstatvfs fills the struct on success; we read it only then.
    let rc = unsafe { libc::fstatvfs(f.as_raw_fd(), s.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: rc == 0.
    let s = unsafe { s.assume_init() };
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

fn kind_of(t: &std::fs::FileType) -> &'static str {
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a file"
    }
}

/// An I/O error on `path`, in words that say what to do.
pub(crate) fn describe(e: &io::Error, path: &Path) -> String {
    match e.raw_os_error() {
        Some(libc::ENOENT) => format!("directory {} does not exist", parent(path).display()),
        Some(libc::EACCES) | Some(libc::EPERM) => {
            format!("{e}; check the permissions of the file and its directory")
        }
        Some(libc::ELOOP) => {
            "it is a symbolic link, which gradcamd does not follow for an output; name the file itself".into()
        }
        Some(libc::EROFS) => format!("{e}; write to another file system"),
        _ => e.to_string(),
    }
}

/// Largest model file read: protobuf's own 2 GiB limit (bigger models keep their weights in
/// external data files).
pub(crate) const MAX_MODEL_BYTES: u64 = 2 << 30;
/// Largest config, sidecar or labels file read.
pub(crate) const MAX_TEXT_BYTES: u64 = 16 << 20;

/// [`read_capped`] for a text file of at most [`MAX_TEXT_BYTES`].
pub(crate) fn read_text(path: &Path, what: &str) -> io::Result<String> {
    let bytes = read_capped(path, MAX_TEXT_BYTES, what)?;
    String::from_utf8(bytes)
        .map_err(|_| io::Error::other(format!("{what} {} is not UTF-8 text", path.display())))
}

/// Reads a whole input file, refusing what is not a regular file (a FIFO or `/dev/zero`
/// would block or never end) and anything larger than `cap` bytes.
pub(crate) fn read_capped(path: &Path, cap: u64, what: &str) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let f = File::open(path)?;
    let m = f.metadata()?;
    if !m.file_type().is_file() {
        return Err(io::Error::other(format!(
            "{what} {} is {}, not a regular file",
            path.display(),
            if m.is_dir() {
                "a directory"
            } else {
                kind_of(&m.file_type())
            }
        )));
    }
    if m.len() > cap {
        return Err(io::Error::other(format!(
            "{what} {} is {} MB, over the {} MB limit",
            path.display(),
            m.len() >> 20,
            cap >> 20
        )));
    }
    let mut buf = Vec::with_capacity(m.len() as usize);
    // A file that grows while it is read stops at the cap.
    f.take(cap + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > cap {
        return Err(io::Error::other(format!(
            "{what} {} grew over the {} MB limit while it was read",
            path.display(),
            cap >> 20
        )));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gradcamd-paths-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("sub")).unwrap();
        d
    }

    #[test]
    fn spellings_links_and_hard_links_are_one_file() {
        let d = dir("ids");
        let v = d.join("v.mp4");
        std::fs::write(&v, b"x").unwrap();
        std::os::unix::fs::symlink(&v, d.join("link.mp4")).unwrap();
        std::fs::hard_link(&v, d.join("hard.mp4")).unwrap();
        let id = identity(&v);
        for other in ["sub/../v.mp4", "./v.mp4", "link.mp4", "hard.mp4"] {
            assert_eq!(identity(&d.join(other)), id, "{other}");
        }
        // Not there yet: the same canonical place.
        assert_eq!(identity(&d.join("new.mp4")), identity(&d.join("sub/../new.mp4")));
        assert_ne!(identity(&d.join("new.mp4")), identity(&d.join("sub/new.mp4")));
        let items = [
            Named::new("source 'v'", &v, Use::Input),
            Named::new("the output", Path::new("/nonexistent/x.mp4"), Use::Output),
        ];
        assert!(check_distinct(&items).is_ok());
        let hard = d.join("hard.mp4");
        let items = [
            Named::new("source 'v'", &v, Use::Input),
            Named::new("the output", &hard, Use::Output),
        ];
        let e = check_distinct(&items).unwrap_err();
        assert!(
            e.contains("source 'v' and the output") && e.contains("same file"),
            "{e}"
        );
        // Two inputs may be one file; two logs may be one file; a log and an output may not.
        let a = [
            Named::new("a", &v, Use::Input),
            Named::new("b", &hard, Use::Input),
        ];
        assert!(check_distinct(&a).is_ok());
        let l = d.join("e.jsonl");
        let b = [Named::new("a", &l, Use::Log), Named::new("b", &l, Use::Log)];
        assert!(check_distinct(&b).is_ok());
        let c = [Named::new("a", &l, Use::Log), Named::new("b", &l, Use::Output)];
        assert!(check_distinct(&c).is_err());
    }

    #[test]
    fn a_claim_never_follows_a_symlink_and_removes_only_what_it_made() {
        let d = dir("claim");
        let victim = d.join("victim.txt");
        std::fs::write(&victim, b"precious").unwrap();
        let trap = d.join("out.mp4");
        std::os::unix::fs::symlink(&victim, &trap).unwrap();
        for overwrite in [false, true] {
            let e = Claim::take(&trap, overwrite).unwrap_err().to_string();
            assert!(e.contains("symbolic link"), "{e}");
        }
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");

        // Existing: refused without overwrite, kept intact with it, and never removed.
        assert!(matches!(Claim::take(&victim, false), Err(ClaimError::Exists)));
        let c = Claim::take(&victim, true).unwrap();
        assert!(!c.created);
        c.verify().unwrap();
        c.abandon();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");

        // New: created empty, removed when abandoned.
        let new = d.join("new.mp4");
        let c = Claim::take(&new, false).unwrap();
        assert!(c.created && new.is_file());
        assert!(c.space_left().is_some_and(|b| b > 0));
        c.abandon();
        assert!(!new.exists());

        // Swapped for a symlink after the claim: verify refuses.
        let c = Claim::take(&new, false).unwrap();
        std::fs::remove_file(&new).unwrap();
        std::os::unix::fs::symlink(&victim, &new).unwrap();
        assert!(c.verify().is_err());
        c.abandon();
        assert!(new.is_symlink(), "abandon removed a file it did not make");
    }

    #[test]
    fn reading_refuses_devices_fifos_and_oversized_files() {
        let e = read_capped(Path::new("/dev/zero"), 1 << 20, "model").unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let d = dir("read");
        let big = d.join("big.onnx");
        std::fs::write(&big, vec![0u8; 2048]).unwrap();
        assert!(read_capped(&big, 4096, "model").is_ok());
        let e = read_capped(&big, 1024, "model").unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
        let e = read_capped(&d, 1 << 20, "model").unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
    }
}
