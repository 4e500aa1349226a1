//! How a library is named, the one rule the tool and the runtime share.
//!
//! A loaded object is known by the name the dynamic loader has for it
//! (its link_map `l_name`, what `dl_iterate_phdr` reports as `dlpi_name`:
//! the name the program asked for, e.g. the SONAME link
//! `/usr/lib64/libfoo.so.1`, not the file `libfoo.so.1.2.3` it resolves
//! to; the executable's path for the main program) and by its SONAME. A
//! patch's target name (`.ulp`) and the library of `--revert-all=LIB`
//! name it when they are its basename or its SONAME, or, when they
//! contain a `/`, its whole loader name.

/// The part after the last `/`.
pub fn basename(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// Whether `lib` names the object the loader calls `loader_name`, whose
/// SONAME `soname` gives (asked only when the name alone does not decide,
/// since reading it costs memory reads).
pub fn names_object<'a>(
    lib: &[u8],
    loader_name: &[u8],
    soname: impl FnOnce() -> Option<&'a [u8]>,
) -> bool {
    if lib.is_empty() {
        return false;
    }
    if lib.contains(&b'/') {
        return loader_name == lib;
    }
    basename(loader_name) == lib || soname() == Some(lib)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_basename_soname_or_path() {
        let none = || None;
        let so = || Some(&b"libfoo.so.1"[..]);
        assert!(names_object(b"libfoo.so.1", b"/usr/lib/libfoo.so.1", none));
        assert!(!names_object(b"libfoo.so", b"/usr/lib/libfoo.so.1", none));
        // Opened by another name (the real file, a private path): its
        // SONAME still names it.
        assert!(names_object(b"libfoo.so.1", b"/opt/x/libfoo.so.1.2.3", so));
        assert!(!names_object(
            b"libfoo.so.1.2",
            b"/opt/x/libfoo.so.1.2.3",
            so
        ));
        assert!(names_object(
            b"/usr/lib/libfoo.so.1",
            b"/usr/lib/libfoo.so.1",
            none
        ));
        assert!(!names_object(
            b"/opt/libfoo.so.1",
            b"/usr/lib/libfoo.so.1",
            so
        ));
        // A path is the loader's name, not the SONAME.
        assert!(!names_object(
            b"/usr/lib/libfoo.so.1",
            b"/usr/lib/libfoo.so.1.2.3",
            so
        ));
        assert!(!names_object(b"", b"", none));
        assert_eq!(basename(b"/a/b/libx.so.1"), b"libx.so.1");
        assert_eq!(basename(b"libx.so"), b"libx.so");
    }
}
