//! The small files of a checkpoint (`config.json`, the index, the tokenizer files): read with
//! a size cap, so that a damaged or hostile file costs at most its cap, and the tokenizer
//! files checked to be what their names say before they are copied into the model folder.
//!
//! The caps are far above real files (microsoft/bitnet-b1.58-2B-4T's and Llama-3's
//! `tokenizer.json` are about 9 MB, a `config.json` a few KB, the index of a 70B model under
//! 100 KB). Only `config.json` is parsed into a JSON tree (about 100 bytes of memory per byte
//! of text); the others are parsed as they stream, into nothing larger than what is kept.

use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use crate::error::{json_error, BuildError, Result};

/// `config.json`: a few KB in real checkpoints; parsed into a tree, so kept small.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// `model.safetensors.index.json`: under 100 KB for a 70B model.
pub const MAX_INDEX_BYTES: u64 = 16 << 20;
/// The tokenizer files: `tokenizer.json` is about 9 MB for 128K-token vocabularies.
pub const MAX_TOKENIZER_BYTES: u64 = 64 << 20;

/// `n` bytes as the caps are written: MiB or KiB.
pub fn size_name(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

/// The bytes of `path`, refused when larger than `cap` (checked before reading, and again
/// while reading, in case the file grows).
pub fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).map_err(|e| BuildError::io(path, e))?;
    let len = file.metadata().map_err(|e| BuildError::io(path, e))?.len();
    let over = |len: u64| {
        BuildError::config(
            path,
            format!(
                "{len} bytes, over the {} this build reads for this file",
                size_name(cap)
            ),
        )
    };
    if len > cap {
        return Err(over(len));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| BuildError::io(path, e))?;
    if bytes.len() as u64 > cap {
        return Err(over(bytes.len() as u64));
    }
    Ok(bytes)
}

/// A JSON object whose entries are not kept: the parser checks the syntax and skips them.
struct AnyObject;

impl<'de> Deserialize<'de> for AnyObject {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AnyObject;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<AnyObject, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(AnyObject)
            }
        }
        d.deserialize_map(V)
    }
}

/// `tokenizer.json` as the Hugging Face tokenizers library writes it: an object with a
/// `model` object (the vocabulary and merges); everything else is skipped.
#[derive(Deserialize)]
struct TokenizerJson {
    #[allow(dead_code)]
    model: AnyObject,
}

/// The tokenizer files `build` copies, each checked to parse as what it claims to be.
pub fn check_tokenizer_file(path: &Path) -> Result<()> {
    let bytes = read_capped(path, MAX_TOKENIZER_BYTES)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let bad = |what: &str, e: String| BuildError::config(path, format!("not {what}: {e}"));
    match name {
        "tokenizer.json" => serde_json::from_slice::<TokenizerJson>(&bytes)
            .map(drop)
            .map_err(|e| {
                bad(
                    "a tokenizers JSON file (an object with a `model` object)",
                    json_error(&e),
                )
            }),
        "tokenizer.model" => check_protobuf(&bytes).or_else(|e| {
            if is_tiktoken(&bytes) {
                Ok(())
            } else {
                Err(bad(
                    "a SentencePiece model (a protobuf with pieces) or a tiktoken BPE file",
                    e,
                ))
            }
        }),
        _ => serde_json::from_slice::<AnyObject>(&bytes)
            .map(drop)
            .map_err(|e| bad("a JSON object", json_error(&e))),
    }
}

/// A tiktoken BPE file (what some repositories name `tokenizer.model`): lines of a base64
/// token and its integer rank.
fn is_tiktoken(b: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(b) else {
        return false;
    };
    let mut lines = 0usize;
    for line in text.lines().filter(|l| !l.is_empty()) {
        let mut parts = line.split(' ');
        let (Some(token), Some(rank), None) = (parts.next(), parts.next(), parts.next()) else {
            return false;
        };
        let base64 = token
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'='));
        if token.is_empty() || !base64 || rank.parse::<u64>().is_err() {
            return false;
        }
        lines += 1;
    }
    lines > 0
}

/// A SentencePiece `ModelProto`: well-formed protobuf wire format (every field's tag, varint
/// and length inside the message) with at least one `pieces` entry (field 1, length-delimited).
fn check_protobuf(b: &[u8]) -> std::result::Result<(), String> {
    fn varint(b: &[u8], at: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *b.get(*at)?;
            *at += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let mut at = 0;
    let mut pieces = 0usize;
    while at < b.len() {
        let start = at;
        let broken = || format!("malformed field at byte {start}");
        let tag = varint(b, &mut at).ok_or_else(broken)?;
        let (field, wire) = (tag >> 3, tag & 7);
        if field == 0 {
            return Err(broken());
        }
        let skip = match wire {
            0 => varint(b, &mut at).map(|_| 0).ok_or_else(broken)?,
            1 => 8,
            2 => varint(b, &mut at)
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(broken)?,
            5 => 4,
            _ => return Err(broken()),
        };
        if b.len() - at < skip {
            return Err(broken());
        }
        at += skip;
        if field == 1 && wire == 2 {
            pieces += 1;
        }
    }
    if pieces == 0 {
        return Err("no pieces (field 1)".into());
    }
    Ok(())
}

/// The first key (in sorted order) that `keys` holds twice. Sorts references, so it costs a
/// pointer per key, not a copy.
pub fn first_duplicate<'a>(keys: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let mut v: Vec<&str> = keys.collect();
    v.sort_unstable();
    v.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}

/// A JSON object's entries in file order, each key once: a key that appears twice is an
/// error (serde's maps keep the last silently). Each value's error names its key.
pub struct Unique<V>(pub Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Unique<V> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Vis<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Vis<V> {
            type Value = Unique<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Unique<V>, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    let v = map.next_value::<V>().map_err(|e| {
                        de::Error::custom(format!("`{}`: {e}", crate::error::short(&k)))
                    })?;
                    out.push((k, v));
                }
                match first_duplicate(out.iter().map(|(k, _)| k.as_str())) {
                    Some(k) => Err(de::Error::custom(format!(
                        "key `{}` appears twice",
                        crate::error::short(k)
                    ))),
                    None => Ok(Unique(out)),
                }
            }
        }
        d.deserialize_map(Vis(std::marker::PhantomData))
    }
}

/// Writes `v` as pretty JSON with a final newline.
pub fn write_json(v: &serde_json::Value, path: &Path) -> Result<()> {
    let mut text = serde_json::to_string_pretty(v).map_err(|e| BuildError::Output {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    text.push('\n');
    std::fs::write(path, text).map_err(|e| BuildError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_files_are_checked_for_what_they_claim() {
        let dir = tempfile::tempdir().unwrap();
        let check = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            check_tokenizer_file(&p).map_err(|e| e.to_string())
        };
        assert!(check(
            "tokenizer.json",
            br#"{"version":"1.0","model":{"type":"BPE"}}"#
        )
        .is_ok());
        for bad in [
            &br#"{"version":"1.0"}"#[..],
            b"[1]",
            b"{\"model\": 3}",
            b"\x00garbage",
        ] {
            let e = check("tokenizer.json", bad).unwrap_err();
            assert!(e.contains("tokenizer.json") && e.contains("model"), "{e}");
        }
        assert!(check("tokenizer_config.json", b"{\"a\": [1, {}]}").is_ok());
        assert!(check("tokenizer_config.json", b"[1, 2]").is_err());
        assert!(check("generation_config.json", b"{\"a\": ").is_err());
        // A SentencePiece model: one piece (field 1, a message holding field 1 "a").
        assert!(check("tokenizer.model", &[0x0a, 0x03, 0x0a, 0x01, b'a']).is_ok());
        assert!(check("tokenizer.model", &[0x0a, 0x09, 0x0a]).is_err());
        assert!(check("tokenizer.model", b"{\"model\": {}}").is_err());
        assert!(check("tokenizer.model", &[0x10, 0x01]).is_err());
        assert!(check("tokenizer.model", b"IQ== 0\nIg== 1\n").is_ok());
        assert!(check("tokenizer.model", b"IQ== zero\n").is_err());
    }

    #[test]
    fn caps_are_checked_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokenizer.json");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(MAX_TOKENIZER_BYTES + 1).unwrap();
        let e = check_tokenizer_file(&p).unwrap_err().to_string();
        assert!(e.contains("tokenizer.json") && e.contains("64 MiB"), "{e}");
    }

    #[test]
    fn unique_refuses_a_key_twice_and_names_it() {
        let ok: Unique<String> = serde_json::from_str(r#"{"a": "x", "b": "y"}"#).unwrap();
        assert_eq!(ok.0.len(), 2);
        let e = serde_json::from_str::<Unique<String>>(r#"{"a": "x", "a": "x"}"#)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("`a` appears twice"), "{e}");
        let e = serde_json::from_str::<Unique<String>>(r#"{"a": 3}"#)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("`a`"), "{e}");
    }
}
