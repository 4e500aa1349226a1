//! `ulp extract`: a JSON description of a library (its file name, GNU
//! build-id and symbols), which `ulp packer` accepts in place of the
//! library itself as the target (`@FILE.json` or `-t FILE.json`). This lets
//! a live patch be packed where only the description of the shipped
//! library is at hand.
//!
//! The document (field names are stable; see README.md, "JSON output"):
//!
//! ```json
//! {
//!   "format": "ulp-extract",
//!   "version": 1,
//!   "name": "libfoo.so.1",
//!   "soname": "libfoo.so.1",
//!   "build_id": "0b12723e714c785b321e9af5c995dc14ca869484",
//!   "symbols": [
//!     { "name": "foo", "offset": 4398, "size": 12, "st_info": 18, "st_other": 0 }
//!   ]
//! }
//! ```
//!
//! `symbols` lists the defined symbols of `.symtab` (static functions and
//! variables included) then of `.dynsym`, in table order, without
//! repeating a name/offset pair; a name is looked up as in the ELF file
//! (first match wins, so `.symtab` before `.dynsym`). `offset` is the
//! symbol value (`st_value`: the address relative to the load base, or the
//! offset in the TLS block for a thread-local variable).
//!
//! When reading, `format`, `version` and `soname` are optional, and
//! `symbols` may also be an object keyed by symbol name.

use std::fmt;
use std::path::Path;

use serde_json::{json, Map, Value};
use ulp_abi::hex::hex;
use ulp_elf::{ElfFile, Symbol};

/// The `format` value written into every description.
pub const FORMAT: &str = "ulp-extract";
/// The `version` value written; readers accept any version up to this one.
pub const VERSION: u64 = 1;

/// What `ulp extract` tells about a library.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetDescription {
    /// The library's file name (what a live patch records as its target).
    pub name: String,
    pub soname: Option<String>,
    /// The GNU build-id.
    pub build_id: Vec<u8>,
    pub symbols: Vec<Symbol>,
}

/// Why a description could not be made or read.
#[derive(Debug)]
pub struct ExtractError(String);

impl fmt::Display for ExtractError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ExtractError {}

fn unhex(s: &str) -> Option<Vec<u8>> {
    // Digits only: from_str_radix alone would also take a sign ("+f").
    if s.len() % 2 == 1 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

impl TargetDescription {
    /// Describes the library at `path`.
    pub fn extract(path: &Path) -> Result<TargetDescription, ExtractError> {
        let elf = ElfFile::open(path).map_err(|e| ExtractError(e.to_string()))?;
        Self::from_elf(&elf)
    }

    /// Describes an already parsed ELF file. It must have a GNU build-id
    /// (ulp matches targets by build-id).
    pub fn from_elf(elf: &ElfFile) -> Result<TargetDescription, ExtractError> {
        let path = elf.path();
        let build_id = elf.build_id().ok_or_else(|| {
            ExtractError(format!(
                "'{}': no GNU build-id: ulp matches targets by build-id, \
                 rebuild it with -Wl,--build-id",
                path.display()
            ))
        })?;
        Ok(TargetDescription {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            soname: elf.soname(),
            build_id,
            symbols: elf.symbols(),
        })
    }

    /// The defined symbol `name` (first match, as [`ElfFile::symbol`]).
    pub fn symbol(&self, name: &str) -> Option<&Symbol> {
        self.symbols.iter().find(|s| s.name == name)
    }

    pub fn to_json(&self) -> Value {
        let symbols: Vec<Value> = self
            .symbols
            .iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "offset": s.value,
                    "size": s.size,
                    "st_info": s.st_info,
                    "st_other": s.st_other,
                })
            })
            .collect();
        json!({
            "format": FORMAT,
            "version": VERSION,
            "name": self.name,
            "soname": self.soname,
            "build_id": hex(&self.build_id),
            "symbols": symbols,
        })
    }

    /// The document as text: pretty-printed, ending with a newline.
    pub fn to_json_text(&self) -> String {
        let mut s = serde_json::to_string_pretty(&self.to_json()).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Reads a description written by [`TargetDescription::to_json_text`].
    pub fn from_json_text(text: &str) -> Result<TargetDescription, ExtractError> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| ExtractError(format!("not valid JSON: {e}")))?;
        Self::from_json(&v)
    }

    pub fn from_json(v: &Value) -> Result<TargetDescription, ExtractError> {
        let bad = |what: &str| ExtractError(format!("not a `ulp extract` description: {what}"));
        let obj = v.as_object().ok_or_else(|| bad("expected a JSON object"))?;
        if let Some(f) = obj.get("format") {
            if f.as_str() != Some(FORMAT) {
                return Err(bad(&format!("\"format\" is {f}, expected \"{FORMAT}\"")));
            }
        }
        if let Some(ver) = obj.get("version") {
            match ver.as_u64() {
                Some(n) if (1..=VERSION).contains(&n) => {}
                _ => {
                    return Err(bad(&format!(
                        "\"version\" is {ver}; this ulp reads versions 1 to {VERSION}"
                    )))
                }
            }
        }
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty() && !n.contains(['/', '\0']))
            .ok_or_else(|| bad("\"name\" must be the library's file name"))?
            .to_string();
        let build_id = obj
            .get("build_id")
            .and_then(Value::as_str)
            .and_then(unhex)
            .filter(|b| !b.is_empty())
            .ok_or_else(|| bad("\"build_id\" must be a hexadecimal string"))?;
        let soname = obj.get("soname").and_then(Value::as_str).map(String::from);
        let symbols = match obj.get("symbols") {
            Some(Value::Array(list)) => list
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let name = s
                        .get("name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| bad(&format!("symbol #{i} has no string \"name\"")))?;
                    symbol_from(name, s).map_err(|w| bad(&w))
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(Value::Object(map)) => map
                .iter()
                .map(|(name, s)| symbol_from(name, s).map_err(|w| bad(&w)))
                .collect::<Result<Vec<_>, _>>()?,
            _ => return Err(bad("\"symbols\" must be a list")),
        };
        Ok(TargetDescription {
            name,
            soname,
            build_id,
            symbols,
        })
    }
}

/// A number field: a JSON integer, or a string in hex (`0x…`) or decimal.
fn number(s: &Map<String, Value>, key: &str) -> Option<u64> {
    match s.get(key)? {
        Value::Number(n) => n.as_u64(),
        Value::String(t) => match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            Some(h) => u64::from_str_radix(h, 16).ok(),
            None => t.parse().ok(),
        },
        _ => None,
    }
}

fn symbol_from(name: &str, v: &Value) -> Result<Symbol, String> {
    let s = v
        .as_object()
        .ok_or_else(|| format!("symbol '{name}' is not an object"))?;
    let field = |key: &str| {
        number(s, key).ok_or_else(|| format!("symbol '{name}' has no numeric \"{key}\""))
    };
    let small = |key: &str| {
        field(key).and_then(|n| {
            u8::try_from(n).map_err(|_| format!("symbol '{name}': \"{key}\" is not a byte"))
        })
    };
    Ok(Symbol {
        name: name.to_string(),
        value: field("offset")?,
        size: number(s, "size").unwrap_or(0),
        st_info: small("st_info")?,
        st_other: number(s, "st_other").map_or(Ok(0), |_| small("st_other"))?,
        // Any defined section: the description lists defined symbols only.
        shndx: 1,
    })
}

/// Whether the file at `path` starts (after whitespace) with `{`.
pub fn looks_like_json(path: &Path) -> bool {
    std::fs::read(path)
        .ok()
        .and_then(|d| d.iter().copied().find(|b| !b.is_ascii_whitespace()))
        == Some(b'{')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_lenient_forms() {
        let d = TargetDescription {
            name: "libt.so.1".into(),
            soname: Some("libt.so.1".into()),
            build_id: vec![0xab, 0x01],
            symbols: vec![Symbol {
                name: "f".into(),
                value: 0x1140,
                size: 11,
                st_info: 0x12,
                st_other: 0,
                shndx: 1,
            }],
        };
        let back = TargetDescription::from_json_text(&d.to_json_text()).unwrap();
        assert_eq!(back, d);
        let keyed = r#"{"name":"libt.so.1","build_id":"ab01",
            "symbols":{"f":{"offset":"0x1140","size":11,"st_info":18}}}"#;
        let k = TargetDescription::from_json_text(keyed).unwrap();
        assert_eq!(k.symbol("f"), d.symbol("f"));
        assert_eq!(k.soname, None);
    }

    #[test]
    fn bad_documents_are_refused() {
        for (text, why) in [
            ("[]", "expected a JSON object"),
            ("{", "not valid JSON"),
            (r#"{"build_id":"ab","symbols":[]}"#, "\"name\""),
            (r#"{"name":"a/b","build_id":"ab","symbols":[]}"#, "\"name\""),
            (
                r#"{"name":"l","build_id":"xyz","symbols":[]}"#,
                "\"build_id\"",
            ),
            // A sign is not a hex digit (u8::from_str_radix takes "+f").
            (
                r#"{"name":"l","build_id":"+f+f","symbols":[]}"#,
                "\"build_id\"",
            ),
            // A file name has no NUL (the container stores it as a C string).
            (
                r#"{"name":"l\u0000x","build_id":"ab","symbols":[]}"#,
                "\"name\"",
            ),
            (r#"{"name":"l","build_id":"ab"}"#, "\"symbols\""),
            (
                r#"{"name":"l","build_id":"ab","symbols":[{"offset":1,"st_info":1}]}"#,
                "no string \"name\"",
            ),
            (
                r#"{"name":"l","build_id":"ab","symbols":[{"name":"f","st_info":1}]}"#,
                "\"offset\"",
            ),
            (
                r#"{"name":"l","build_id":"ab","symbols":[{"name":"f","offset":1,"st_info":300}]}"#,
                "not a byte",
            ),
            (
                r#"{"format":"other","name":"l","build_id":"ab","symbols":[]}"#,
                "\"format\"",
            ),
            (
                r#"{"version":9,"name":"l","build_id":"ab","symbols":[]}"#,
                "\"version\"",
            ),
        ] {
            let e = TargetDescription::from_json_text(text).expect_err(text);
            assert!(e.to_string().contains(why), "{text}: {e}");
        }
    }
}
