//! `ulp packer`: read a .dsc, look its functions and variables up in the
//! target and the container, and write `.ulp`, `.ulp.rev` and (when the
//! .dsc has comment lines) `.ulp.comments` into the container.
//!
//! Every check happens before anything is written: on any error the
//! container is left untouched. The write itself replaces the file
//! atomically (see [`ulp_elf::replace_sections`]).
//!
//! What libpulp does and we keep (COMPAT.md): relative paths resolve against
//! the current directory (as a convenience, a path that does not exist
//! there but does next to the .dsc is taken from there); the patch id is the
//! first 16 bytes of the container's build-id then the MD4 of the .dsc
//! bytes; references are stored in reverse .dsc order.
//!
//! The target may also be a JSON description written by `ulp extract`
//! (`@libfoo.json` or `-t libfoo.json`): its name, build-id and symbols
//! stand in for the library's.
//!
//! Errors point at the first problem in the file: items are checked in
//! file order, and a syntax error is reported only when nothing before it
//! is already wrong.

use std::fmt;
use std::path::{Path, PathBuf};

use ulp_abi::elf::{STT_COMMON, STT_FILE, STT_NOTYPE, STT_OBJECT, STT_SECTION, STT_TLS};
use ulp_elf::{ElfFile, Symbol};

use crate::dsc::{self, Dsc, DscError, DscRef, DscUnit, Located};
use crate::extract::{looks_like_json, TargetDescription};
use crate::format::{encode_comments, Metadata, Reference, Unit, PATCH_ID_LEN};
use crate::md4::md4;

/// The sections the packer owns; re-packing drops all of them first.
pub const ULP_SECTIONS: [&str; 3] = [".ulp", ".ulp.rev", ".ulp.comments"];

/// Command-line overrides (`ulp packer -l FILE -t FILE`).
#[derive(Clone, Debug, Default)]
pub struct PackOptions {
    /// `-l`: write into this container instead of the .dsc's first line.
    pub container_override: Option<PathBuf>,
    /// `-t`: use this target instead of the .dsc's `@` line.
    pub target_override: Option<PathBuf>,
    /// Called on the .dsc before it is read and on the container before it
    /// is opened; an `Err(message)` stops the packer with that message
    /// (`ulp packer` passes `ulp_core::trust::check` when run as root).
    pub trust: Option<TrustCheck>,
}

/// See [`PackOptions::trust`]: `Err(message)` refuses the file.
pub type TrustCheck = fn(&Path) -> Result<(), String>;

/// What [`pack`] wrote.
#[derive(Clone, Debug)]
pub struct PackReport {
    /// The container file that now carries the sections.
    pub container: PathBuf,
    /// The `.ulp` contents.
    pub metadata: Metadata,
    /// Whether a `.ulp.comments` section was written.
    pub comments_written: bool,
}

/// What kind of problem stopped the packer.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackErrorKind {
    /// The .dsc cannot be read, or is not valid.
    Description,
    /// A file named by the .dsc (or an override) is missing.
    MissingFile,
    /// The container or the target is not a usable ELF file.
    Elf,
    /// A function or variable named by the .dsc is not where it should be.
    Symbol,
    /// The container or the target has no GNU build-id.
    BuildId,
    /// Writing the sections into the container failed.
    Write,
    /// [`PackOptions::trust`] refused the .dsc or the container.
    Untrusted,
}

/// Why packing failed. About a .dsc item it displays compiler-style,
/// `FILE.dsc:LINE:COL: error: MESSAGE`; otherwise just the message (which
/// names the file).
#[derive(Debug)]
pub struct PackError {
    kind: PackErrorKind,
    location: Option<(PathBuf, usize, usize)>,
    message: String,
}

impl PackError {
    pub fn kind(&self) -> PackErrorKind {
        self.kind
    }

    /// The .dsc file, line and column the error is about, if any.
    pub fn location(&self) -> Option<(&Path, usize, usize)> {
        self.location
            .as_ref()
            .map(|(p, l, c)| (p.as_path(), *l, *c))
    }

    /// The message without the location.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for PackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some((file, line, col)) => write!(
                f,
                "{}:{line}:{col}: error: {}",
                file.display(),
                self.message
            ),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for PackError {}

/// Builds errors about one .dsc file.
struct Ctx<'a> {
    dsc_path: &'a Path,
    dsc_dir: PathBuf,
}

impl Ctx<'_> {
    fn at<T>(&self, kind: PackErrorKind, item: &Located<T>, message: String) -> PackError {
        PackError {
            kind,
            location: Some((self.dsc_path.to_path_buf(), item.line, item.col)),
            message,
        }
    }

    fn plain(kind: PackErrorKind, message: String) -> PackError {
        PackError {
            kind,
            location: None,
            message,
        }
    }

    /// A path written in the .dsc: as given when it exists (relative to the
    /// current directory, like libpulp), else next to the .dsc.
    fn resolve(&self, item: &Located<String>, what: &str) -> Result<PathBuf, PackError> {
        let p = PathBuf::from(&item.value);
        if p.exists() {
            return Ok(p);
        }
        if p.is_relative() {
            let beside = self.dsc_dir.join(&p);
            if beside.exists() {
                return Ok(beside);
            }
            return Err(self.at(
                PackErrorKind::MissingFile,
                item,
                format!(
                    "cannot find the {what} '{}' (looked in the current directory and in '{}')",
                    item.value,
                    self.dsc_dir.display()
                ),
            ));
        }
        Err(self.at(
            PackErrorKind::MissingFile,
            item,
            format!("cannot find the {what} '{}'", item.value),
        ))
    }

    /// Opens the file for an item (located errors) or an override (plain).
    fn open(&self, path: &Path, item: Option<&Located<String>>) -> Result<ElfFile, PackError> {
        ElfFile::open(path).map_err(|e| {
            let message = e.to_string();
            match item {
                Some(item) => self.at(PackErrorKind::Elf, item, message),
                None => Ctx::plain(PackErrorKind::Elf, message),
            }
        })
    }

    /// Opens the target: an ELF file, or a JSON description from `ulp
    /// extract`.
    fn open_target(
        &self,
        path: &Path,
        item: Option<&Located<String>>,
    ) -> Result<TargetFile, PackError> {
        if !looks_like_json(path) {
            return self.open(path, item).map(TargetFile::Elf);
        }
        let described = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| TargetDescription::from_json_text(&t).map_err(|e| e.to_string()));
        described.map(TargetFile::Described).map_err(|why| {
            let message = format!("'{}': {why}", path.display());
            match item {
                Some(item) => self.at(PackErrorKind::Elf, item, message),
                None => Ctx::plain(PackErrorKind::Elf, message),
            }
        })
    }
}

/// The target a .dsc names: the library itself or its description.
enum TargetFile {
    Elf(ElfFile),
    Described(TargetDescription),
}

impl TargetFile {
    fn symbol(&self, name: &str) -> Option<Symbol> {
        match self {
            TargetFile::Elf(e) => e.symbol(name),
            TargetFile::Described(d) => d.symbol(name).cloned(),
        }
    }

    fn build_id(&self) -> Option<Vec<u8>> {
        match self {
            TargetFile::Elf(e) => e.build_id(),
            TargetFile::Described(d) => Some(d.build_id.clone()),
        }
    }

    /// The name the patch records: the library's file name.
    fn name(&self, path: &Path) -> String {
        match self {
            TargetFile::Elf(_) => path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            TargetFile::Described(d) => d.name.clone(),
        }
    }
}

/// A unit or reference line, for checking them in file order.
enum Item<'a> {
    Unit(&'a DscUnit),
    Ref(&'a DscRef),
}

impl Item<'_> {
    fn position(&self) -> (usize, usize) {
        match self {
            Item::Unit(u) => (u.old.line, u.old.col),
            Item::Ref(r) => (r.line, r.col),
        }
    }
}

/// Symbol types a unit may name: functions, and untyped symbols (hand
/// written assembly).
fn callable(s: &Symbol) -> bool {
    s.is_function() || s.kind() == STT_NOTYPE
}

fn describe(s: &Symbol) -> &'static str {
    match s.kind() {
        STT_OBJECT => "a data object",
        STT_SECTION => "a section",
        STT_FILE => "a file name",
        STT_COMMON => "a common block",
        STT_TLS => "a thread-local variable",
        _ => "not a function",
    }
}

/// Adds the container sections to an ELF file (replacing any earlier
/// `.ulp`, `.ulp.rev` and `.ulp.comments`), atomically, without any
/// external tool.
pub fn write_sections(elf_path: &Path, sections: &[(&str, &[u8])]) -> Result<(), ulp_elf::Error> {
    ulp_elf::replace_sections(elf_path, &ULP_SECTIONS, sections)
}

/// Packs the live patch described by `dsc_path` (see the module comment).
pub fn pack(dsc_path: &Path, opts: &PackOptions) -> Result<PackReport, PackError> {
    if let Some(trust) = opts.trust {
        trust(dsc_path).map_err(|why| Ctx::plain(PackErrorKind::Untrusted, why))?;
    }
    let dsc_bytes = std::fs::read(dsc_path).map_err(|e| {
        Ctx::plain(
            PackErrorKind::Description,
            format!("'{}': cannot read the description: {e}", dsc_path.display()),
        )
    })?;
    let ctx = Ctx {
        dsc_path,
        dsc_dir: match dsc_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        },
    };
    let text = std::str::from_utf8(&dsc_bytes).map_err(|e| {
        let good = dsc_bytes.get(..e.valid_up_to()).unwrap_or(&[]);
        let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = good.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
        let col = String::from_utf8_lossy(good.get(line_start..).unwrap_or(&[]))
            .chars()
            .count()
            + 1;
        PackError {
            kind: PackErrorKind::Description,
            location: Some((dsc_path.to_path_buf(), line, col)),
            message: "invalid UTF-8: a .dsc must be text".to_string(),
        }
    })?;
    let dsc = match dsc::parse(text) {
        Ok(d) => d,
        Err(e) => {
            return Err(earlier_problem(&ctx, text, &e, opts).unwrap_or(PackError {
                kind: PackErrorKind::Description,
                location: Some((dsc_path.to_path_buf(), e.line, e.col)),
                message: e.message,
            }))
        }
    };
    let (container_path, metadata) = check(&ctx, &dsc, &dsc_bytes, opts)?;
    let ulp = metadata.encode();
    let rev = metadata.revert().encode();
    let comments = encode_comments(&dsc.comments);
    let mut sections: Vec<(&str, &[u8])> = vec![(".ulp", &ulp), (".ulp.rev", &rev)];
    if let Some(c) = &comments {
        sections.push((".ulp.comments", c));
    }
    write_sections(&container_path, &sections).map_err(|e| {
        Ctx::plain(
            PackErrorKind::Write,
            format!("cannot write the live patch sections: {e}"),
        )
    })?;
    Ok(PackReport {
        container: container_path,
        metadata,
        comments_written: comments.is_some(),
    })
}

/// For a syntax error at some line: a problem in the items before that
/// line (a missing file, an unknown function), which comes first.
fn earlier_problem(
    ctx: &Ctx<'_>,
    text: &str,
    syntax: &DscError,
    opts: &PackOptions,
) -> Option<PackError> {
    let cut: usize = text
        .split('\n')
        .take(syntax.line.saturating_sub(1))
        .map(|l| l.len() + 1)
        .sum();
    let before = dsc::parse(text.get(..cut)?).ok()?;
    let e = check(ctx, &before, &[], opts).err()?;
    let (_, line, col) = e.location()?;
    ((line, col) < (syntax.line, syntax.col)).then_some(e)
}

/// Every check of a parsed .dsc, in file order; writes nothing. Returns
/// the container to write and the metadata for it.
fn check(
    ctx: &Ctx<'_>,
    dsc: &Dsc,
    dsc_bytes: &[u8],
    opts: &PackOptions,
) -> Result<(PathBuf, Metadata), PackError> {
    let dsc_path = ctx.dsc_path;
    // The container.
    let (container_path, container_item) = match &opts.container_override {
        Some(p) => (p.clone(), None),
        None => (
            ctx.resolve(&dsc.container, "live patch")?,
            Some(&dsc.container),
        ),
    };
    if let Some(trust) = opts.trust {
        trust(&container_path).map_err(|why| match container_item {
            Some(item) => ctx.at(PackErrorKind::Untrusted, item, why),
            None => Ctx::plain(PackErrorKind::Untrusted, why),
        })?;
    }
    let container = ctx.open(&container_path, container_item)?;
    let container_id = container.build_id().ok_or_else(|| {
        let message = format!(
            "'{}': the live patch has no GNU build-id: link it with -Wl,--build-id",
            container_path.display()
        );
        match container_item {
            Some(item) => ctx.at(PackErrorKind::BuildId, item, message),
            None => Ctx::plain(PackErrorKind::BuildId, message),
        }
    })?;

    // The target.
    let (target_path, target_item) = match (&opts.target_override, &dsc.target) {
        (Some(p), _) => (p.clone(), None),
        (None, Some(t)) => (ctx.resolve(t, "target")?, Some(t)),
        (None, None) => {
            return Err(Ctx::plain(
                PackErrorKind::Description,
                format!(
                    "'{}': no target line: add `@/path/to/library.so` after the live patch \
                     line, or pass -t FILE",
                    dsc_path.display()
                ),
            ))
        }
    };
    let target = ctx.open_target(&target_path, target_item)?;
    let build_id = target.build_id().ok_or_else(|| {
        let message = format!(
            "'{}': the target has no GNU build-id: ulp matches targets by build-id, \
             rebuild it with -Wl,--build-id",
            target_path.display()
        );
        match target_item {
            Some(item) => ctx.at(PackErrorKind::BuildId, item, message),
            None => Ctx::plain(PackErrorKind::BuildId, message),
        }
    })?;
    let target_name = target.name(&target_path);
    let tp = target_path.display();
    let cp = container_path.display();

    let mut items: Vec<Item<'_>> = dsc.units.iter().map(Item::Unit).collect();
    items.extend(dsc.refs.iter().map(Item::Ref));
    items.sort_by_key(Item::position);
    let mut units = Vec::with_capacity(dsc.units.len());
    let mut refs = Vec::with_capacity(dsc.refs.len());
    for item in items {
        match item {
            Item::Unit(u) => units.push(check_unit(ctx, u, &target, &container, &tp, &cp)?),
            Item::Ref(r) => refs.push(check_ref(ctx, r, &target, &container, &tp, &cp)?),
        }
    }
    // libpulp stores references in reverse .dsc order.
    refs.reverse();

    let mut patch_id = [0u8; PATCH_ID_LEN];
    // A build-id shorter than 16 bytes (unusual: --build-id=0xHEX) leaves
    // zeros in the rest of the first half.
    for (d, s) in patch_id.iter_mut().zip(container_id.iter().take(16)) {
        *d = *s;
    }
    patch_id[16..].copy_from_slice(&md4(dsc_bytes));
    Ok((
        container_path,
        Metadata {
            patch_id,
            build_id,
            target_name,
            units,
            refs,
        },
    ))
}

fn check_unit(
    ctx: &Ctx<'_>,
    u: &DscUnit,
    target: &TargetFile,
    container: &ElfFile,
    tp: &dyn fmt::Display,
    cp: &dyn fmt::Display,
) -> Result<Unit, PackError> {
    let old = target.symbol(&u.old.value).ok_or_else(|| {
        ctx.at(
            PackErrorKind::Symbol,
            &u.old,
            format!(
                "function '{}' not found in the target '{tp}' \
                     (neither in .symtab nor in .dynsym)",
                u.old.value
            ),
        )
    })?;
    if !callable(&old) {
        return Err(ctx.at(
            PackErrorKind::Symbol,
            &u.old,
            format!(
                "'{}' in the target '{tp}' is {}",
                u.old.value,
                describe(&old)
            ),
        ));
    }
    match container.dynamic_symbol(&u.new.value) {
        Some(new) if callable(&new) => {}
        Some(new) => {
            return Err(ctx.at(
                PackErrorKind::Symbol,
                &u.new,
                format!(
                    "'{}' in the live patch '{cp}' is {}",
                    u.new.value,
                    describe(&new)
                ),
            ))
        }
        None => {
            let why = if container.symbol(&u.new.value).is_some() {
                "is not exported (it is not in .dynsym, so the runtime cannot find it): \
                     make it a global symbol with default visibility"
            } else {
                "is not defined there"
            };
            return Err(ctx.at(
                PackErrorKind::Symbol,
                &u.new,
                format!("function '{}' of the live patch '{cp}' {why}", u.new.value),
            ));
        }
    }
    Ok(Unit {
        old_fname: u.old.value.clone(),
        new_fname: u.new.value.clone(),
        old_faddr: old.value,
    })
}

fn check_ref(
    ctx: &Ctx<'_>,
    r: &DscRef,
    target: &TargetFile,
    container: &ElfFile,
    tp: &dyn fmt::Display,
    cp: &dyn fmt::Display,
) -> Result<Reference, PackError> {
    let (target_offset, patch_offset) = match r.offsets {
        Some(o) => (o.target, o.patch),
        None => {
            let tvar = target.symbol(&r.target.value).ok_or_else(|| {
                ctx.at(
                    PackErrorKind::Symbol,
                    &r.target,
                    format!(
                        "variable '{}' not found in the target '{tp}' \
                             (neither in .symtab nor in .dynsym)",
                        r.target.value
                    ),
                )
            })?;
            if r.tls && !tvar.is_tls() {
                return Err(ctx.at(
                    PackErrorKind::Symbol,
                    &r.target,
                    format!(
                        "'{}' in the target '{tp}' is not thread-local: write `#{}:{}`",
                        r.target.value, r.target.value, r.patch.value
                    ),
                ));
            }
            if !r.tls && tvar.is_tls() {
                return Err(ctx.at(
                    PackErrorKind::Symbol,
                    &r.target,
                    format!(
                        "'{}' in the target '{tp}' is thread-local: write `#%{}:{}`",
                        r.target.value, r.target.value, r.patch.value
                    ),
                ));
            }
            let pvar = container.symbol(&r.patch.value).ok_or_else(|| {
                ctx.at(
                    PackErrorKind::Symbol,
                    &r.patch,
                    format!(
                        "variable '{}' not found in the live patch '{cp}'",
                        r.patch.value
                    ),
                )
            })?;
            (tvar.value, pvar.value)
        }
    };
    Ok(Reference {
        target_name: r.target.value.clone(),
        patch_name: r.patch.value.clone(),
        target_offset,
        patch_offset,
        tls: r.tls,
    })
}
