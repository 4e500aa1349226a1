//! May root use this file? A live-patch container is loaded into running
//! processes, often root's own: when `ulp` runs as root, a container (or a
//! .dsc that decides what gets packed) that another user can change would
//! let that user run code as root. [`check`] says whether anyone but root
//! can change the file at `path`, by writing it or by replacing it (or a
//! directory on its way) with something else.
//!
//! The rule, applied to the path as the kernel resolves it (every symbolic
//! link followed, each link's own directory checked as well as its
//! target's):
//!
//! * every directory on the way, from `/` down, is owned by root and not
//!   writable by group or others, unless it has the sticky bit (like
//!   `/tmp`, mode 1777): there other users may add their own entries but
//!   cannot rename or remove root's, so it is accepted as long as the entry
//!   used in it is owned by root;
//! * every symbolic link followed is owned by root (in a sticky directory
//!   its owner could remove and replace it);
//! * the file itself is owned by root and not writable by group or others.
//!
//! Only the owner and the mode bits count: ACLs and capabilities of other
//! users are not looked at.

use std::ffi::OsString;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

const S_IWGRP: u32 = 0o020;
const S_IWOTH: u32 = 0o002;
const S_ISVTX: u32 = 0o1000;
/// Symbolic links followed at most (as the kernel's MAXSYMLINKS).
const MAX_LINKS: usize = 40;

/// What a path entry is, for the rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Directory,
    Symlink,
    File,
}

/// Why a file is not trusted. Displays as one sentence that names the
/// path, the reason and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Untrusted {
    /// The file asked about.
    pub file: PathBuf,
    /// The entry that fails the rule: the file, a directory on its path
    /// or a symbolic link followed.
    pub path: PathBuf,
    pub kind: Kind,
    /// Its owner, when that is the problem.
    pub owner: Option<u32>,
    /// Its mode, when group or other write permission is the problem.
    pub mode: Option<u32>,
    /// The entry could not be examined at all (the I/O error).
    pub unreadable: Option<String>,
}

impl Untrusted {
    /// How the message names the entry at fault.
    fn what(&self) -> String {
        let p = self.path.display();
        match self.kind {
            _ if self.path == self.file => "the file".to_string(),
            Kind::File => format!("the file it resolves to, '{p}',"),
            Kind::Directory => format!("directory '{p}' on its path"),
            Kind::Symlink => format!("symbolic link '{p}' on its path"),
        }
    }
}

/// The name of `uid` from /etc/passwd, or `uid N`.
fn user_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                (f.nth(1)?.parse::<u32>().ok()? == uid).then(|| format!("{name} (uid {uid})"))
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

impl Untrusted {
    /// What is wrong and the fix, without the refusal and without
    /// `--force` (for callers whose override is another).
    pub fn problem(&self) -> String {
        let p = self.path.display();
        if let Some(e) = &self.unreadable {
            return format!(
                "cannot examine '{p}' ({e}) to tell whether another user could change it"
            );
        }
        let prefix = self.what();
        if let Some(uid) = self.owner {
            format!(
                "{prefix} is owned by {}, who could change it and so run code as root; \
                 `chown root '{p}'` (and check its contents)",
                user_name(uid)
            )
        } else {
            let mode = self.mode.unwrap_or(0);
            let by = match (mode & S_IWGRP != 0, mode & S_IWOTH != 0) {
                (true, true) => "its group and by others",
                (true, false) => "its group",
                _ => "others",
            };
            format!(
                "{prefix} (mode {:04o}) is writable by {by}, who could change it and so run \
                 code as root; `chmod go-w '{p}'`",
                mode & 0o7777
            )
        }
    }
}

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "refusing '{}' as root: {}",
            self.file.display(),
            self.problem()
        )?;
        if self.unreadable.is_some() {
            f.write_str("; pass --force to use it anyway")
        } else {
            f.write_str(", or pass --force to use it anyway")
        }
    }
}

impl std::error::Error for Untrusted {}

/// Whether the process runs with effective uid 0 (when [`check`] matters).
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The rule for one entry of `kind` with owner `uid` and `mode`: `None`
/// when it passes, else the offending owner or mode.
pub fn judge(kind: Kind, uid: u32, mode: u32) -> Option<(Option<u32>, Option<u32>)> {
    if uid != 0 {
        return Some((Some(uid), None));
    }
    let writable = mode & (S_IWGRP | S_IWOTH) != 0;
    match kind {
        Kind::Symlink => None,
        Kind::Directory if writable && mode & S_ISVTX != 0 => None,
        _ if writable => Some((None, Some(mode))),
        _ => None,
    }
}

/// Checks `path` against the rule (module comment); a relative path counts
/// from the current directory.
pub fn check(path: &Path) -> Result<(), Untrusted> {
    let file = path.to_path_buf();
    let refuse = |at: &Path, kind, (owner, mode)| Untrusted {
        file: file.clone(),
        path: at.to_path_buf(),
        kind,
        owner,
        mode,
        unreadable: None,
    };
    let unreadable = |at: &Path, kind, e: std::io::Error| Untrusted {
        file: file.clone(),
        path: at.to_path_buf(),
        kind,
        owner: None,
        mode: None,
        unreadable: Some(e.to_string()),
    };
    let start = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| unreadable(Path::new("."), Kind::Directory, e))?
            .join(path)
    };
    // Names still to look up, last first.
    let mut todo: Vec<OsString> = Vec::new();
    push_components(&mut todo, &start);
    let mut dir = PathBuf::from("/");
    check_dir(&dir).map_err(|e| match e {
        Err(io) => unreadable(&dir, Kind::Directory, io),
        Ok(why) => refuse(&dir, Kind::Directory, why),
    })?;
    let mut links = 0;
    while let Some(name) = todo.pop() {
        if name == ".." {
            dir.pop();
            continue;
        }
        let at = dir.join(&name);
        let last = todo.is_empty();
        let meta = std::fs::symlink_metadata(&at).map_err(|e| unreadable(&at, Kind::File, e))?;
        let mode = meta.mode();
        if meta.file_type().is_symlink() {
            if let Some(why) = judge(Kind::Symlink, meta.uid(), mode) {
                return Err(refuse(&at, Kind::Symlink, why));
            }
            links += 1;
            if links > MAX_LINKS {
                return Err(unreadable(
                    &at,
                    Kind::Symlink,
                    std::io::Error::from_raw_os_error(libc::ELOOP),
                ));
            }
            let target = std::fs::read_link(&at).map_err(|e| unreadable(&at, Kind::Symlink, e))?;
            if target.is_absolute() {
                dir = PathBuf::from("/");
            }
            push_components(&mut todo, &target);
            continue;
        }
        let kind = if meta.is_dir() && !last {
            Kind::Directory
        } else {
            Kind::File
        };
        if let Some(why) = judge(kind, meta.uid(), mode) {
            // The file itself, reached without a link: name it as given.
            let shown = if last && links == 0 { path } else { &at };
            return Err(refuse(shown, kind, why));
        }
        if !last {
            dir = at;
        }
    }
    Ok(())
}

/// Pushes the names of `path` onto `todo` so that they pop in order
/// (`.` and the root dropped; `..` kept).
fn push_components(todo: &mut Vec<OsString>, path: &Path) {
    let names: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    todo.extend(names.into_iter().rev());
}

/// `/` under the rule: Ok(Ok) passes, Ok(Err(why)) fails, Err unreadable.
#[allow(clippy::type_complexity)]
fn check_dir(dir: &Path) -> Result<(), Result<(Option<u32>, Option<u32>), std::io::Error>> {
    let meta = std::fs::metadata(dir).map_err(Err)?;
    match judge(Kind::Directory, meta.uid(), meta.mode()) {
        None => Ok(()),
        Some(why) => Err(Ok(why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_rule() {
        // Owner first, then the write bits; sticky directories pass.
        assert_eq!(judge(Kind::File, 0, 0o100644), None);
        assert_eq!(judge(Kind::File, 0, 0o100755), None);
        assert_eq!(judge(Kind::File, 1000, 0o100644), Some((Some(1000), None)));
        assert_eq!(judge(Kind::File, 0, 0o100664), Some((None, Some(0o100664))));
        assert_eq!(judge(Kind::File, 0, 0o100646), Some((None, Some(0o100646))));
        assert_eq!(judge(Kind::Directory, 0, 0o40755), None);
        assert_eq!(judge(Kind::Directory, 0, 0o41777), None);
        assert_eq!(
            judge(Kind::Directory, 0, 0o40777),
            Some((None, Some(0o40777)))
        );
        assert_eq!(
            judge(Kind::Directory, 0, 0o40775),
            Some((None, Some(0o40775)))
        );
        assert_eq!(
            judge(Kind::Directory, 65534, 0o41777),
            Some((Some(65534), None))
        );
        assert_eq!(judge(Kind::Symlink, 0, 0o120777), None);
        assert_eq!(
            judge(Kind::Symlink, 65534, 0o120777),
            Some((Some(65534), None))
        );
    }

    #[test]
    fn messages_name_the_path_the_cause_and_the_fix() {
        let u = Untrusted {
            file: "/srv/fix.so".into(),
            path: "/srv".into(),
            kind: Kind::Directory,
            owner: None,
            mode: Some(0o40777),
            unreadable: None,
        };
        let m = u.to_string();
        assert!(
            m.contains(
                "directory '/srv' on its path (mode 0777) is writable by its group and by others"
            ) && m.contains("chmod go-w '/srv'")
                && m.contains("--force"),
            "{m}"
        );
        let u = Untrusted {
            path: "/srv/fix.so".into(),
            kind: Kind::File,
            owner: Some(4242424),
            mode: None,
            ..u
        };
        let m = u.to_string();
        assert!(
            m.contains("the file is owned by uid 4242424")
                && m.contains("chown root '/srv/fix.so'"),
            "{m}"
        );
    }

    /// A scratch directory for the file system cases, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!("ulp-trust-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn walks_the_path_through_links() {
        // As root, the scratch files are root's: each case changes one
        // thing. As anyone else, every file is that user's and is refused.
        let s = Scratch::new("walk");
        let f = s.0.join("fix.so");
        std::fs::write(&f, b"x").unwrap();
        chmod(&f, 0o644);
        if !running_as_root() {
            let e = check(&f).unwrap_err();
            assert!(e.owner.is_some(), "{e}");
            return;
        }
        // The temporary directory itself may be /tmp (sticky): accepted.
        assert_eq!(check(&f), Ok(()));
        chmod(&f, 0o664);
        let e = check(&f).unwrap_err();
        assert_eq!((e.path.as_path(), e.mode), (f.as_path(), Some(0o100664)));
        chmod(&f, 0o644);

        let sub = s.0.join("sub");
        std::fs::create_dir(&sub).unwrap();
        let g = sub.join("g.so");
        std::fs::write(&g, b"x").unwrap();
        chmod(&g, 0o644);
        chmod(&sub, 0o777);
        let e = check(&g).unwrap_err();
        assert_eq!((e.path.as_path(), e.kind), (sub.as_path(), Kind::Directory));
        chmod(&sub, 0o1777);
        assert_eq!(check(&g), Ok(()));
        // A relative path and `..` resolve as the kernel does.
        let dotted = sub.join("..").join("sub").join(".").join("g.so");
        assert_eq!(check(&dotted), Ok(()));

        // A link in the sticky directory to the good file: fine while it is
        // root's, refused once it belongs to someone who could replace it.
        let link = sub.join("link.so");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert_eq!(check(&link), Ok(()));
        std::os::unix::fs::lchown(&link, Some(65534), None).unwrap();
        let e = check(&link).unwrap_err();
        assert_eq!((e.path.as_path(), e.owner), (link.as_path(), Some(65534)));
        // A link whose target is in a bad place is refused for the target.
        chmod(&sub, 0o755);
        let bad = s.0.join("open");
        std::fs::create_dir(&bad).unwrap();
        chmod(&bad, 0o777);
        let h = bad.join("h.so");
        std::fs::write(&h, b"x").unwrap();
        chmod(&h, 0o644);
        let link2 = sub.join("link2.so");
        std::os::unix::fs::symlink("../open/h.so", &link2).unwrap();
        let e = check(&link2).unwrap_err();
        assert_eq!(e.path, bad);
        // A missing file cannot be examined.
        let e = check(&s.0.join("missing.so")).unwrap_err();
        assert!(e.unreadable.is_some(), "{e}");
    }
}
