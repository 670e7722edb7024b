//! A seeded mutation campaign on `build`: the sample checkpoints (samples/checkpoints, single
//! file and split into two shards with an index) with their safetensors headers and data,
//! `config.json` values, index and tokenizer files damaged or rewritten, and the flags varied.
//! Every case must end in one of two ways:
//! - exit 0 with a correct model: where the mutation keeps the checkpoint's meaning (keys
//!   reordered, tensors laid out in another order, padding, metadata strings, a `weight_map`
//!   entry dropped, ...) the folder is byte-identical to the unmutated build; where it changes
//!   the data, it equals the build of the same data laid out in reverse order; where it
//!   changes a config value, the folder follows it; and every accepted folder runs in
//!   onnxruntime-genai (`tests/python/genai_smoke.py`: a few tokens);
//! - exit 2 with an error naming the file (and the key, tensor or flag) in a few lines, nothing
//!   written and no staging folder left.
//!
//! And in every case: no panic, no second copy of an OS error, the input unchanged.
//! `BITNET_MUTATION_SEED` and `BITNET_MUTATION_CASES` run another or a longer campaign.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::{json, Value};

/// splitmix64: a small deterministic generator, so a failing case is reproducible by its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())].clone()
    }
}

/// One tensor's entry in a safetensors header.
#[derive(Clone, Debug)]
struct Entry {
    name: String,
    dtype: String,
    shape: Vec<u64>,
    begin: usize,
    end: usize,
}

impl Entry {
    fn json(&self) -> String {
        self.json_at(self.begin, self.end)
    }

    fn json_at(&self, begin: usize, end: usize) -> String {
        format!(
            r#"{{"dtype":"{}","shape":{},"data_offsets":[{begin},{end}]}}"#,
            self.dtype,
            serde_json::to_string(&self.shape).unwrap()
        )
    }
}

/// A safetensors file taken apart: entries in data order, and the data.
#[derive(Clone)]
struct St {
    entries: Vec<Entry>,
    data: Vec<u8>,
}

fn key(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

impl St {
    fn read(p: &Path) -> St {
        let b = std::fs::read(p).unwrap();
        let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        let h: BTreeMap<String, Value> = serde_json::from_slice(&b[8..8 + n]).unwrap();
        let mut entries: Vec<Entry> = h
            .iter()
            .filter(|(k, _)| *k != "__metadata__")
            .map(|(k, v)| Entry {
                name: k.clone(),
                dtype: v["dtype"].as_str().unwrap().into(),
                shape: v["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap())
                    .collect(),
                begin: v["data_offsets"][0].as_u64().unwrap() as usize,
                end: v["data_offsets"][1].as_u64().unwrap() as usize,
            })
            .collect();
        entries.sort_by_key(|e| e.begin);
        St {
            entries,
            data: b[8 + n..].to_vec(),
        }
    }

    /// The header text of `items` (key JSON, value JSON), in that order, duplicates allowed.
    fn header(items: &[(String, String)]) -> String {
        let body: Vec<String> = items.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        format!("{{{}}}", body.join(","))
    }

    fn items(&self) -> Vec<(String, String)> {
        self.entries
            .iter()
            .map(|e| (key(&e.name), e.json()))
            .collect()
    }

    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn bytes(&self) -> Vec<u8> {
        St::file(&St::header(&self.items()), &self.data)
    }

    /// The same tensors with their bytes in reverse order (offsets follow).
    fn reversed(&self) -> St {
        let mut data = Vec::with_capacity(self.data.len());
        let mut entries = Vec::new();
        for e in self.entries.iter().rev() {
            let begin = data.len();
            data.extend_from_slice(&self.data[e.begin..e.end]);
            entries.push(Entry {
                begin,
                end: data.len(),
                ..e.clone()
            });
        }
        St { entries, data }
    }
}

/// The base checkpoints: the samples as they are, and the packed one split into two shards.
fn make_base(root: &Path, form: &str) -> PathBuf {
    let src = workspace().join("samples/checkpoints").join(match form {
        "sharded" => "packed",
        f => f,
    });
    let ck = root.join(form);
    std::fs::create_dir(&ck).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), ck.join(e.file_name())).unwrap();
    }
    if form == "sharded" {
        let p = ck.join("model.safetensors");
        let st = St::read(&p);
        let half = st.entries.len() / 2;
        let mut weight_map = serde_json::Map::new();
        for (i, part) in [&st.entries[..half], &st.entries[half..]]
            .into_iter()
            .enumerate()
        {
            let file = format!("model-{:05}-of-00002.safetensors", i + 1);
            let mut shard = St {
                entries: Vec::new(),
                data: Vec::new(),
            };
            for e in part {
                let begin = shard.data.len();
                shard.data.extend_from_slice(&st.data[e.begin..e.end]);
                shard.entries.push(Entry {
                    begin,
                    end: shard.data.len(),
                    ..e.clone()
                });
                weight_map.insert(e.name.clone(), file.clone().into());
            }
            std::fs::write(ck.join(&file), shard.bytes()).unwrap();
        }
        std::fs::remove_file(&p).unwrap();
        write_json(
            &ck.join(INDEX),
            &json!({"metadata": {"total_size": st.data.len()}, "weight_map": weight_map}),
        );
    }
    ck
}

const INDEX: &str = "model.safetensors.index.json";
const OUTPUTS: [&str; 3] = ["model.onnx", "model.onnx.data", "genai_config.json"];

fn write_json(p: &Path, v: &Value) {
    std::fs::write(p, serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// The safetensors files of a checkpoint directory, in name order.
fn weight_files(ck: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(ck)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    v.sort();
    v
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

type Mutation = Box<dyn Fn(&Path)>;

/// What a case must end in.
enum Expect {
    /// Exit 0, and the folder the unmutated checkpoint builds.
    Same,
    /// Exit 2 and an error containing every needle.
    Refused(Vec<String>),
    /// Exit 2 naming one of the needles, or exit 0 with the unmutated checkpoint's folder.
    RefusedOrSame(Vec<String>),
    /// The checkpoint `twin` writes (the same data laid out otherwise) ends the same way: both
    /// exit 2 (naming one of the needles), or both exit 0 with identical folders.
    Twin(Mutation, Vec<String>),
    /// Exit 2 naming one of the needles, or exit 0 with a folder whose genai_config agrees
    /// with the (mutated) config.json.
    RefusedOrFollowsConfig(Vec<String>),
    /// Exit 0 (a runnable folder, checked for every accepted case).
    Accepted,
}

struct Case {
    what: String,
    base: &'static str,
    mutate: Mutation,
    flags: Vec<String>,
    expect: Expect,
}

impl Case {
    fn flag_strs(&self) -> Vec<&str> {
        self.flags.iter().map(String::as_str).collect()
    }
}

/// Things every accepted folder must satisfy, whatever the case: what ONNX Runtime checks
/// before it runs (GroupQueryAttention's head size, its rotary caches covering the context,
/// MatMulNBits' 2-bit block size) and the context length bound.
fn runnable(out: &Path) -> Result<(), String> {
    let g = read_json(&out.join("genai_config.json"));
    let d = &g["model"]["decoder"];
    let head = d["head_size"].as_u64().unwrap_or(0);
    let ctx = g["model"]["context_length"].as_u64().unwrap_or(0);
    if head == 0 || !head.is_multiple_of(16) {
        return Err(format!("head_size {head}"));
    }
    if ctx == 0 || ctx > 131072 {
        return Err(format!("context_length {ctx}"));
    }
    let model = bitnet_model::Model::load(out.join("model.onnx")).map_err(|e| e.to_string())?;
    let graph = model.proto.graph.as_ref().unwrap();
    for t in &graph.initializer {
        if t.name.as_deref() == Some("cos_cache") && t.dims != [ctx as i64, head as i64 / 2] {
            return Err(format!("cos_cache {:?} for context {ctx}", t.dims));
        }
    }
    for n in &graph.node {
        if n.op_type.as_deref() != Some("MatMulNBits") {
            continue;
        }
        let attr = |k: &str| {
            n.attribute
                .iter()
                .find(|a| a.name.as_deref() == Some(k))
                .and_then(|a| a.i)
        };
        let (bits, bs) = (attr("bits").unwrap_or(4), attr("block_size").unwrap_or(0));
        if !(16..=256).contains(&bs) || !(bs as u64).is_power_of_two() || bits == 2 && bs > 256 {
            return Err(format!("MatMulNBits bits {bits} block_size {bs}"));
        }
    }
    Ok(())
}

/// Runs one case in a fresh directory: its exit code, or what went wrong. An accepted folder
/// is moved to `keep`, for onnxruntime-genai to run.
fn run_case(
    case: &Case,
    bases: &Path,
    refs: &BTreeMap<&str, PathBuf>,
    keep: &Path,
) -> Result<i32, String> {
    let dir = tempfile::tempdir().unwrap();
    let copy = |name: &str| -> PathBuf {
        let ck = dir.path().join(name);
        std::fs::create_dir(&ck).unwrap();
        for e in std::fs::read_dir(bases.join(case.base)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), ck.join(e.file_name())).unwrap();
        }
        ck
    };
    let ck = copy("ck");
    (case.mutate)(&ck);
    let before = snapshot(&ck);
    let out = dir.path().join("out");
    let r = build(&ck, &out, &case.flag_strs());
    let err = String::from_utf8_lossy(&r.stderr).into_owned();
    let code = r.status.code();
    let said = |m: &str| format!("{m} (exit {code:?}): {}", shorten(&err));
    if code != Some(0) && code != Some(2) {
        return Err(said("neither exit 0 nor 2"));
    }
    if err.contains("panicked") {
        return Err(said("panic"));
    }
    if err.len() > 2000 {
        return Err(said(&format!("{} bytes of errors", err.len())));
    }
    if err.matches("(os error").count() > 1 {
        return Err(said("the OS error printed twice"));
    }
    if snapshot(&ck) != before {
        return Err(said("the input changed"));
    }
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "ck" && n != "out")
        .collect();
    left.sort();
    if !left.is_empty() {
        return Err(said(&format!("left behind {left:?}")));
    }
    let named = |needles: &[String]| needles.iter().any(|n| err.contains(n.as_str()));
    if code == Some(2) {
        if out.exists() {
            return Err(said("exit 2 but the output folder exists"));
        }
    } else {
        runnable(&out).map_err(|m| said(&format!("accepted but not runnable: {m}")))?;
        // The tokenizer files are copies.
        for (name, bytes) in &before {
            let copied = name.starts_with("tokenizer") || name.ends_with("_map.json");
            if copied && std::fs::read(out.join(name)).ok().as_ref() != Some(bytes) {
                return Err(said(&format!("{name} not copied as it is")));
            }
        }
    }
    let same_as = |other: &Path| -> Result<(), String> {
        for f in OUTPUTS {
            if std::fs::read(out.join(f)).unwrap() != std::fs::read(other.join(f)).unwrap() {
                return Err(said(&format!("{f} differs from what it should be")));
            }
        }
        Ok(())
    };
    let reference = &refs[case.base];
    let verdict = match &case.expect {
        Expect::Same => {
            if code != Some(0) {
                return Err(said("refused a checkpoint that means the same"));
            }
            same_as(reference)
        }
        Expect::Refused(needles) => {
            if code != Some(2) {
                return Err(said("accepted"));
            }
            match needles.iter().find(|n| !err.contains(n.as_str())) {
                Some(n) => Err(said(&format!("{n:?} not named"))),
                None => Ok(()),
            }
        }
        Expect::RefusedOrSame(needles) => match code {
            Some(2) if named(needles) => Ok(()),
            Some(2) => Err(said(&format!("none of {needles:?} named"))),
            _ => same_as(reference),
        },
        Expect::Accepted => match code {
            Some(0) => Ok(()),
            _ => Err(said("refused")),
        },
        Expect::RefusedOrFollowsConfig(needles) => match code {
            Some(2) if named(needles) => Ok(()),
            Some(2) => Err(said(&format!("none of {needles:?} named"))),
            _ => follows_config(&ck, &out).map_err(|m| said(&m)),
        },
        Expect::Twin(twin, needles) => {
            let ck2 = copy("twin");
            twin(&ck2);
            let out2 = dir.path().join("out2");
            let r2 = build(&ck2, &out2, &case.flag_strs());
            if r2.status.code() != code {
                return Err(said(&format!(
                    "the same data laid out otherwise ends with exit {:?}: {}",
                    r2.status.code(),
                    shorten(&String::from_utf8_lossy(&r2.stderr))
                )));
            }
            match code {
                Some(2) if named(needles) => Ok(()),
                Some(2) => Err(said(&format!("none of {needles:?} named"))),
                _ => same_as(&out2),
            }
        }
    };
    verdict?;
    if code == Some(0) {
        std::fs::rename(&out, keep).unwrap();
    }
    Ok(code.unwrap_or(-1))
}

fn shorten(s: &str) -> String {
    if s.len() <= 600 {
        return s.to_string();
    }
    let mut end = 600;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}

/// An accepted mutated config: the genai_config says what config.json says.
fn follows_config(ck: &Path, out: &Path) -> Result<(), String> {
    let c = read_json(&ck.join("config.json"));
    let g = read_json(&out.join("genai_config.json"));
    let checks = [
        ("max_position_embeddings", &g["model"]["context_length"]),
        (
            "num_attention_heads",
            &g["model"]["decoder"]["num_attention_heads"],
        ),
        (
            "num_hidden_layers",
            &g["model"]["decoder"]["num_hidden_layers"],
        ),
        ("hidden_size", &g["model"]["decoder"]["hidden_size"]),
        ("vocab_size", &g["model"]["vocab_size"]),
    ];
    for (k, built) in checks {
        if let Some(v) = c.get(k).filter(|v| !v.is_null()) {
            if v.as_u64() != built.as_u64() {
                return Err(format!("config {k} = {v}, genai_config has {built}"));
            }
        }
    }
    Ok(())
}

/// Replaces the 8-byte header length of `p`.
fn set_header_len(p: &Path, f: impl Fn(u64) -> u64) {
    let mut b = std::fs::read(p).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap());
    b[..8].copy_from_slice(&f(n).to_le_bytes());
    std::fs::write(p, b).unwrap();
}

/// The cases of one campaign, drawn from the mutation kinds below by `rng`.
fn cases(rng: &mut Rng, n: usize, bases: &Path) -> Vec<Case> {
    let mut out = Vec::new();
    for i in 0..n {
        let seed = rng.next();
        let base = rng.pick(&["packed", "packed", "sharded", "bf16"]);
        // The header-length kinds (0 and 1) are drawn twice as often as the others.
        let kind = rng.below(KINDS + 2) % KINDS;
        out.push(case(i, kind, seed, base, &bases.join(base)));
    }
    out
}

const KINDS: usize = 24;

/// One case: mutation `kind` with its own generator `seed`, on a copy of base `base`
/// (`base_dir` is the unmutated base, read to plan the mutation).
fn case(i: usize, kind: usize, seed: u64, base: &'static str, base_dir: &Path) -> Case {
    let mut rng = Rng(seed);
    let files = weight_files(base_dir);
    let target = rng.pick(&files);
    let tname = file_name(&target);
    let st = St::read(&target);
    let ne = st.entries.len();
    let (a, b) = (rng.below(ne), rng.below(ne));
    let mk = |what: String, mutate: Mutation, expect: Expect| Case {
        what: format!("#{i} {base}: {what}"),
        base,
        mutate,
        flags: Vec::new(),
        expect,
    };
    let refused_file = || Expect::Refused(vec![tname.clone()]);
    match kind {
        // Header length off by a few bytes. Writers pad the header with spaces (safetensors
        // aligns the data to 8 bytes), so a length a few bytes short still ends in valid JSON
        // and only shifts every tensor: exactly what must not build.
        0 => {
            let pad = 1 + rng.below(7);
            let d = if rng.below(4) == 0 {
                1 + rng.below(3) as i64
            } else {
                -(1 + rng.below(pad) as i64)
            };
            let s = st.clone();
            mk(
                format!("{tname}: header padded by {pad}, its length {d:+}"),
                Box::new(move |ck| {
                    let h = format!("{}{}", St::header(&s.items()), " ".repeat(pad));
                    let mut b = St::file(&h, &s.data);
                    let n = (h.len() as i64 + d) as u64;
                    b[..8].copy_from_slice(&n.to_le_bytes());
                    std::fs::write(ck.join(file_name(&target)), b).unwrap()
                }),
                refused_file(),
            )
        }
        // Absurd header lengths.
        1 => {
            let n = rng.pick(&[0u64, 1, 7, 1 << 32, 1 << 40, 1 << 63, u64::MAX]);
            mk(
                format!("{tname}: header length {n}"),
                Box::new(move |ck| set_header_len(&ck.join(file_name(&target)), |_| n)),
                refused_file(),
            )
        }
        // One tensor's offsets shifted (same length): overlaps a neighbour, leaves a gap.
        2 => {
            let d = rng.pick(&[-4i64, -2, -1, 1, 2, 4]);
            let mut s = st.clone();
            let e = &mut s.entries[a];
            e.begin = (e.begin as i64 + d).max(0) as usize;
            e.end = (e.end as i64 + d).max(0) as usize;
            let what = format!("{tname}: {} shifted {d:+}", e.name);
            mk(
                what,
                Box::new(move |ck| std::fs::write(ck.join(file_name(&target)), s.bytes()).unwrap()),
                refused_file(),
            )
        }
        // One tensor aliases another's bytes (its own left uncovered).
        3 => {
            let mut s = st.clone();
            let (src_b, src_e) = (st.entries[b].begin, st.entries[b].end);
            let e = &mut s.entries[a];
            let what = format!("{tname}: {} aliases {}", e.name, st.entries[b].name);
            if a != b {
                // Keep the alias's length so only coverage can tell.
                e.begin = src_b;
                e.end = src_e;
                e.shape = vec![(src_e - src_b) as u64];
                e.dtype = "U8".into();
            }
            let expect = if a == b { Expect::Same } else { refused_file() };
            mk(
                what,
                Box::new(move |ck| std::fs::write(ck.join(file_name(&target)), s.bytes()).unwrap()),
                expect,
            )
        }
        // A gap: bytes inserted after one tensor, later offsets moved past them.
        4 => {
            let k = 1 + rng.below(64);
            let mut s = st.clone();
            let at = s.entries[a].end;
            let junk: Vec<u8> = (0..k).map(|_| rng.next() as u8).collect();
            s.data.splice(at..at, junk);
            for e in s.entries.iter_mut().skip(a + 1) {
                e.begin += k;
                e.end += k;
            }
            // (After the last tensor, the bytes trail the data.)
            mk(
                format!("{tname}: {k} bytes between tensors"),
                Box::new(move |ck| std::fs::write(ck.join(file_name(&target)), s.bytes()).unwrap()),
                refused_file(),
            )
        }
        // A key twice: the same entry, or another tensor's entry under its name.
        5 => {
            let mut items = st.items();
            let dup = if rng.below(2) == 0 {
                items[a].clone()
            } else {
                (items[a].0.clone(), items[b].1.clone())
            };
            let at = rng.below(items.len() + 1);
            items.insert(at, dup);
            let data = st.data.clone();
            let name = st.entries[a].name.clone();
            mk(
                format!("{tname}: key {name} twice"),
                Box::new(move |ck| {
                    std::fs::write(
                        ck.join(file_name(&target)),
                        St::file(&St::header(&items), &data),
                    )
                    .unwrap()
                }),
                Expect::Refused(vec![tname.clone(), name.clone()]),
            )
        }
        // Bytes after the last tensor.
        6 => {
            let k = 1 + rng.below(100);
            mk(
                format!("{tname}: {k} trailing bytes"),
                Box::new(move |ck| {
                    let p = ck.join(file_name(&target));
                    let mut b = std::fs::read(&p).unwrap();
                    b.extend(std::iter::repeat_n(0u8, k));
                    std::fs::write(p, b).unwrap();
                }),
                refused_file(),
            )
        }
        // The file cut short.
        7 => {
            let k = 1 + rng.below(200);
            mk(
                format!("{tname}: {k} bytes cut"),
                Box::new(move |ck| {
                    let p = ck.join(file_name(&target));
                    let b = std::fs::read(&p).unwrap();
                    std::fs::write(&p, &b[..b.len().saturating_sub(k)]).unwrap();
                }),
                refused_file(),
            )
        }
        // __metadata__: strings are fine, anything else is not.
        8 => {
            let (meta, ok) = rng.pick(&[
                (r#"{"format":"pt"}"#, true),
                (r#"{"format":"pt","note":"x y z"}"#, true),
                (r#"{}"#, true),
                (r#"{"format":1}"#, false),
                (r#"{"a":{"b":"c"}}"#, false),
                (r#"{"a":null}"#, false),
                (r#"[1,2]"#, false),
                (r#""pt""#, false),
            ]);
            let mut items = st.items();
            items.insert(
                rng.below(items.len() + 1),
                (key("__metadata__"), meta.into()),
            );
            let data = st.data.clone();
            mk(
                format!("{tname}: __metadata__ {meta}"),
                Box::new(move |ck| {
                    std::fs::write(
                        ck.join(file_name(&target)),
                        St::file(&St::header(&items), &data),
                    )
                    .unwrap()
                }),
                if ok {
                    Expect::Same
                } else {
                    Expect::Refused(vec![tname.clone(), "__metadata__".into()])
                },
            )
        }
        // The same tensors, meaning unchanged: keys in another order, data in another order,
        // the header padded with spaces (as safetensors' writer aligns it).
        9 => {
            let mut items = st.items();
            for i in (1..items.len()).rev() {
                items.swap(i, rng.below(i + 1));
            }
            let pad = rng.below(9);
            let rev = rng.below(2) == 0;
            let s = if rev { st.reversed() } else { st.clone() };
            let items = if rev { s.items() } else { items };
            mk(
                format!("{tname}: reordered (data reversed: {rev}), {pad} spaces of padding"),
                Box::new(move |ck| {
                    let h = format!("{}{}", St::header(&items), " ".repeat(pad));
                    std::fs::write(ck.join(file_name(&target)), St::file(&h, &s.data)).unwrap()
                }),
                Expect::Same,
            )
        }
        // A random byte of the header replaced.
        10 => {
            let hdr = St::header(&st.items());
            let at = rng.below(hdr.len());
            let byte = rng.pick(&[b'0', b'1', b'9', b'"', b' ', b'{', b']', b'x', 0xff, b'-']);
            let data = st.data.clone();
            let mut h = hdr.into_bytes();
            h[at] = byte;
            mk(
                format!("{tname}: header byte {at} = {byte:#x}"),
                Box::new(move |ck| {
                    let mut out = (h.len() as u64).to_le_bytes().to_vec();
                    out.extend_from_slice(&h);
                    out.extend_from_slice(&data);
                    std::fs::write(ck.join(file_name(&target)), out).unwrap()
                }),
                Expect::RefusedOrSame(vec![tname.clone()]),
            )
        }
        // A shape that no longer matches the config, bytes consistent.
        11 => {
            let mut s = st.clone();
            let e = &mut s.entries[a];
            let n: u64 = e.shape.iter().product();
            e.shape = if rng.below(2) == 0 {
                let mut v = vec![1];
                v.extend(&e.shape);
                v
            } else {
                vec![n]
            };
            let changed = e.shape != st.entries[a].shape;
            let what = format!("{tname}: {} shape {:?}", e.name, e.shape);
            mk(
                what,
                Box::new(move |ck| std::fs::write(ck.join(file_name(&target)), s.bytes()).unwrap()),
                if changed {
                    Expect::Refused(vec![st.entries[a].name.clone()])
                } else {
                    Expect::Same
                },
            )
        }
        // Data bytes changed: whatever the build makes of them, it makes the same of them
        // laid out in reverse order.
        12 | 13 => {
            let mut s = st.clone();
            let flips = 1 + rng.below(8);
            for _ in 0..flips {
                let at = rng.below(s.data.len());
                s.data[at] = rng.next() as u8;
            }
            let twin = s.reversed();
            let t2 = target.clone();
            mk(
                format!("{tname}: {flips} data bytes changed"),
                Box::new(move |ck| std::fs::write(ck.join(file_name(&target)), s.bytes()).unwrap()),
                Expect::Twin(
                    Box::new(move |ck| {
                        std::fs::write(ck.join(file_name(&t2)), twin.bytes()).unwrap()
                    }),
                    vec![tname.clone()],
                ),
            )
        }
        // A header over the cap (padding spaces: valid JSON, just too large).
        14 => {
            let data = st.data.clone();
            let items = st.items();
            mk(
                format!("{tname}: 17 MiB header"),
                Box::new(move |ck| {
                    let h = format!("{}{}", St::header(&items), " ".repeat(17 << 20));
                    std::fs::write(ck.join(file_name(&target)), St::file(&h, &data)).unwrap()
                }),
                Expect::Refused(vec![tname.clone(), "MiB".into()]),
            )
        }
        // config.json values the build reads, set to odd values.
        15..=17 => {
            let k = rng.pick(&[
                "vocab_size",
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "head_dim",
                "max_position_embeddings",
                "max_position_embeddings",
                "rms_norm_eps",
                "rope_theta",
                "tie_word_embeddings",
                "bos_token_id",
                "eos_token_id",
                "pad_token_id",
                "hidden_act",
                "model_type",
                "attention_bias",
            ]);
            let big = "x".repeat(1 << 19);
            let v = rng.pick(&[
                json!(0),
                json!(-1),
                json!(1),
                json!(2),
                json!(4),
                json!(8),
                json!(16),
                json!(32),
                json!(64),
                json!(100),
                json!(511),
                json!(512),
                json!(4096),
                json!(1u64 << 24),
                json!(1u64 << 26),
                json!(1u64 << 31),
                json!(1u64 << 53),
                json!(1u64 << 63),
                json!(u64::MAX),
                json!(1.5),
                json!(1e300),
                json!(-0.0),
                json!("relu2"),
                json!("bitnet"),
                json!(""),
                json!(big),
                json!(null),
                json!([]),
                json!({}),
                json!(true),
                json!(false),
            ]);
            let shown = shorten(&v.to_string()).chars().take(40).collect::<String>();
            mk(
                format!("config.json: {k} = {shown}"),
                Box::new(move |ck| {
                    let p = ck.join("config.json");
                    let mut c = read_json(&p);
                    c[k] = v.clone();
                    write_json(&p, &c);
                }),
                Expect::RefusedOrFollowsConfig(vec![
                    "config.json".into(),
                    ".safetensors".into(),
                    INDEX.into(),
                ]),
            )
        }
        // quantization_config and rope settings.
        18 => {
            let (path, v) = rng.pick(&[
                ("quant_method", json!("gptq")),
                ("quant_method", json!("x".repeat(1 << 20))),
                ("linear_class", json!("autobitlinear")),
                ("linear_class", json!(7)),
                ("quantization_mode", json!("online")),
                ("quantization_mode", json!("later")),
                ("use_rms_norm", json!(true)),
                ("modules_to_not_convert", json!(["model.layers.0"])),
            ]);
            mk(
                format!("config.json: quantization_config.{path}"),
                Box::new(move |ck| {
                    let p = ck.join("config.json");
                    let mut c = read_json(&p);
                    c["quantization_config"][path] = v.clone();
                    write_json(&p, &c);
                }),
                Expect::RefusedOrFollowsConfig(vec!["config.json".into(), ".safetensors".into()]),
            )
        }
        // config.json keys the graph does not read, and config.json as a whole.
        19 => {
            let (what, text, ok): (&str, Option<String>, bool) = rng.pick(&[
                ("an unknown key", None, true),
                ("not JSON", Some("{\"model_type\": ".into()), false),
                ("an array", Some("[1, 2]".into()), false),
                ("empty", Some(String::new()), false),
                (
                    "over the cap",
                    Some(format!("{{\"a\": \"{}\"}}", "y".repeat(2 << 20))),
                    false,
                ),
            ]);
            mk(
                format!("config.json: {what}"),
                Box::new(move |ck| {
                    let p = ck.join("config.json");
                    match &text {
                        Some(t) => std::fs::write(&p, t).unwrap(),
                        None => {
                            let mut c = read_json(&p);
                            c["initializer_range"] = json!(0.5);
                            c["some_unknown_key"] = json!({"deep": [1, 2, 3]});
                            c["torch_dtype"] = json!("float32");
                            write_json(&p, &c);
                        }
                    }
                }),
                if ok {
                    Expect::Same
                } else {
                    Expect::Refused(vec!["config.json".into()])
                },
            )
        }
        // The index (sharded base only; elsewhere one is added that names model.safetensors).
        20 | 21 => index_case(&mut rng, i, base, base_dir, &st),
        // Tokenizer files.
        22 => {
            let f = rng.pick(&[
                "tokenizer.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
                "generation_config.json",
            ]);
            let (what, text, ok): (&str, Option<&str>, bool) = rng.pick(&[
                ("garbage", Some("\u{0}\u{1}garbage"), false),
                ("truncated", Some("{\"model\": {\"type\": \"BPE\""), false),
                ("an array", Some("[1, 2, 3]"), false),
                ("a string", Some("\"hello\""), false),
                ("an extra key", None, true),
                ("removed", Some("<remove>"), true),
            ]);
            let ok = ok && !(f == "tokenizer.json" && what == "removed");
            let ok_removed = f == "tokenizer.json" && what == "removed";
            mk(
                format!("{f}: {what}"),
                Box::new(move |ck| {
                    let p = ck.join(f);
                    match text {
                        Some("<remove>") => std::fs::remove_file(&p).unwrap(),
                        Some(t) => std::fs::write(&p, t).unwrap(),
                        None => {
                            let mut v = read_json(&p);
                            v["bitnet_onnx_test_extra"] = json!([1, {"a": "b"}]);
                            write_json(&p, &v);
                        }
                    }
                }),
                if ok || ok_removed {
                    Expect::Same
                } else {
                    Expect::Refused(vec![f.into()])
                },
            )
        }
        // tokenizer.json without a model, or over its cap.
        _ => {
            let (what, huge) = rng.pick(&[("no `model`", false), ("over the cap", true)]);
            mk(
                format!("tokenizer.json: {what}"),
                Box::new(move |ck| {
                    let p = ck.join("tokenizer.json");
                    if huge {
                        let f = std::fs::File::create(&p).unwrap();
                        f.set_len(65 << 20).unwrap();
                    } else {
                        let mut v = read_json(&p);
                        v.as_object_mut().unwrap().remove("model");
                        write_json(&p, &v);
                    }
                }),
                Expect::Refused(vec![
                    "tokenizer.json".into(),
                    if huge { "MiB" } else { "model" }.into(),
                ]),
            )
        }
    }
}

/// Index mutations: on the sharded base, its `weight_map` damaged; elsewhere an index added.
fn index_case(rng: &mut Rng, i: usize, base: &'static str, base_dir: &Path, st: &St) -> Case {
    let mk = |what: String, mutate: Mutation, expect: Expect| Case {
        what: format!("#{i} {base}: {what}"),
        base,
        mutate,
        flags: Vec::new(),
        expect,
    };
    if base != "sharded" {
        // An index naming model.safetensors for every tensor: the same checkpoint.
        let names: Vec<String> = st.entries.iter().map(|e| e.name.clone()).collect();
        return mk(
            "an index naming model.safetensors".into(),
            Box::new(move |ck| {
                let map: serde_json::Map<String, Value> = names
                    .iter()
                    .map(|n| (n.clone(), json!("model.safetensors")))
                    .collect();
                write_json(&ck.join(INDEX), &json!({"weight_map": map}));
            }),
            Expect::Same,
        );
    }
    let index = read_json(&base_dir.join(INDEX));
    let map = index["weight_map"].as_object().unwrap().clone();
    let names: Vec<String> = map.keys().cloned().collect();
    let t = rng.pick(&names);
    let shard = map[&t].as_str().unwrap().to_string();
    let other = if shard.contains("00001") {
        "model-00002-of-00002.safetensors"
    } else {
        "model-00001-of-00002.safetensors"
    };
    let kind = rng.below(8);
    let edit = move |f: Box<dyn Fn(&mut Value)>| -> Mutation {
        Box::new(move |ck: &Path| {
            let p = ck.join(INDEX);
            let mut v = read_json(&p);
            f(&mut v);
            write_json(&p, &v);
        })
    };
    match kind {
        0 => {
            let t2 = t.clone();
            mk(
                format!("weight_map puts {t} in {other}"),
                edit(Box::new(move |v| v["weight_map"][&t2] = json!(other))),
                Expect::Refused(vec![INDEX.into(), t.clone(), other.into()]),
            )
        }
        1 => {
            let t2 = t.clone();
            mk(
                format!("weight_map without {t}"),
                edit(Box::new(move |v| {
                    v["weight_map"].as_object_mut().unwrap().remove(&t2);
                })),
                Expect::Same,
            )
        }
        2 => mk(
            "weight_map names a tensor its shard lacks".into(),
            edit(Box::new(move |v| {
                v["weight_map"]["model.layers.0.mlp.extra.weight"] = json!(other)
            })),
            Expect::Refused(vec![other.into(), "model.layers.0.mlp.extra.weight".into()]),
        ),
        3 => {
            let (what, w) = rng.pick(&[
                ("a number", json!(3)),
                ("a path outside", json!("../model.safetensors")),
                ("an absolute path", json!("/etc/passwd")),
                ("empty", json!("")),
                ("a missing file", json!("model-00003-of-00002.safetensors")),
                ("a long name", json!("z".repeat(100_000))),
            ]);
            let t2 = t.clone();
            mk(
                format!("weight_map.{t} is {what}"),
                edit(Box::new(move |v| v["weight_map"][&t2] = w.clone())),
                Expect::Refused(vec![INDEX.into()]),
            )
        }
        4 => {
            let (what, text) = rng.pick(&[
                ("not JSON", "{\"weight_map\": {".to_string()),
                ("no weight_map", "{\"metadata\": {}}".to_string()),
                ("weight_map an array", "{\"weight_map\": []}".to_string()),
                (
                    "over the cap",
                    format!("{{\"x\": \"{}\"}}", "q".repeat(17 << 20)),
                ),
            ]);
            mk(
                format!("index {what}"),
                Box::new(move |ck| std::fs::write(ck.join(INDEX), &text).unwrap()),
                Expect::Refused(vec![INDEX.into()]),
            )
        }
        5 => {
            // A key twice in weight_map (text), naming the other shard the second time.
            let t2 = t.clone();
            mk(
                format!("weight_map has {t} twice"),
                Box::new(move |ck| {
                    let p = ck.join(INDEX);
                    let text = std::fs::read_to_string(&p).unwrap();
                    let needle = "\"weight_map\": {";
                    let at = text.find(needle).unwrap() + needle.len();
                    let text = format!("{}{}: \"{other}\",{}", &text[..at], key(&t2), &text[at..]);
                    std::fs::write(&p, text).unwrap();
                }),
                Expect::Refused(vec![INDEX.into(), t.clone()]),
            )
        }
        6 => {
            // The tensor removed from its shard, the index still naming it there.
            let sp = base_dir.join(&shard);
            let s = St::read(&sp);
            let mut s2 = s.clone();
            s2.entries.retain(|e| e.name != t);
            // Keep the file fully covered: drop the tensor's bytes too.
            let mut data = Vec::new();
            for e in &mut s2.entries {
                let bytes = &s.data[e.begin..e.end];
                e.begin = data.len();
                data.extend_from_slice(bytes);
                e.end = data.len();
            }
            s2.data = data;
            let shard2 = shard.clone();
            mk(
                format!("{t} removed from {shard}"),
                Box::new(move |ck| std::fs::write(ck.join(&shard2), s2.bytes()).unwrap()),
                Expect::Refused(vec![shard.clone(), t.clone()]),
            )
        }
        _ => mk(
            "index with extra metadata".into(),
            edit(Box::new(|v| {
                v["metadata"] = json!({"total_size": 1, "format": {"deep": [1, 2]}})
            })),
            Expect::Same,
        ),
    }
}

/// Flag cases: block sizes in and out of what ONNX Runtime runs.
fn flag_cases(rng: &mut Rng, n: usize) -> Vec<Case> {
    (0..n)
        .map(|i| {
            let flag = rng.pick(&["--block-size", "--table-block-size"]);
            let v = rng.pick(&[
                "0",
                "1",
                "8",
                "15",
                "16",
                "24",
                "32",
                "64",
                "256",
                "512",
                "65536",
                "9223372036854775808",
                "18446744073709551616",
                "-1",
            ]);
            let ok = match flag {
                "--block-size" => ["16", "32", "64", "256"].contains(&v),
                // Blocks along the hidden axis of the samples (128).
                _ => ["16", "32", "64"].contains(&v),
            };
            Case {
                what: format!("#f{i} packed: {flag} {v}"),
                base: "packed",
                mutate: Box::new(|_| {}),
                flags: vec![format!("{flag}={v}")],
                expect: if ok {
                    Expect::Accepted
                } else {
                    Expect::Refused(vec![flag.into()])
                },
            }
        })
        .collect()
}

#[test]
fn mutated_checkpoints_build_correctly_or_are_refused_by_name() {
    let seed = std::env::var("BITNET_MUTATION_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_0024);
    let n: usize = std::env::var("BITNET_MUTATION_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let work = tempfile::tempdir().unwrap();
    let bases = work.path().join("bases");
    std::fs::create_dir(&bases).unwrap();
    let mut refs = BTreeMap::new();
    for form in ["packed", "sharded", "bf16"] {
        let ck = make_base(&bases, form);
        let out = work.path().join(format!("ref-{form}"));
        let r = build(&ck, &out, &[]);
        assert!(
            r.status.success(),
            "{form}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        refs.insert(form, out);
    }
    // The split changes nothing.
    for f in OUTPUTS {
        assert_eq!(
            std::fs::read(refs["packed"].join(f)).unwrap(),
            std::fs::read(refs["sharded"].join(f)).unwrap(),
            "{f}"
        );
    }
    let mut rng = Rng(seed);
    let mut all = cases(&mut rng, n, &bases);
    all.extend(flag_cases(&mut rng, n / 20));
    let accepted_dir = work.path().join("accepted");
    std::fs::create_dir(&accepted_dir).unwrap();
    let mut failures = Vec::new();
    let mut codes = BTreeMap::new();
    let mut accepted = BTreeMap::new();
    for (i, c) in all.iter().enumerate() {
        let keep = accepted_dir.join(i.to_string());
        match run_case(c, &bases, &refs, &keep) {
            Ok(code) => {
                *codes.entry(code).or_insert(0) += 1;
                if code == 0 {
                    accepted.insert(keep.to_string_lossy().into_owned(), &c.what);
                }
            }
            Err(e) => failures.push(format!("{}: {e}", c.what)),
        }
    }
    eprintln!("seed {seed:#x}: {} cases, exit codes {codes:?}", all.len());
    // Every accepted folder runs: onnxruntime-genai loads it and generates a few tokens
    // (GroupQueryAttention and MatMulNBits check their shapes only when they run).
    let smoke = std::process::Command::new(python())
        .arg(workspace().join("tests/python/genai_smoke.py"))
        .args(accepted.keys())
        .output()
        .expect("run python");
    assert!(
        smoke.status.success(),
        "{}",
        String::from_utf8_lossy(&smoke.stderr)
    );
    let ran: BTreeMap<String, String> = serde_json::from_slice(&smoke.stdout).unwrap();
    assert_eq!(ran.len(), accepted.len());
    for (folder, verdict) in ran {
        if verdict != "ok" {
            failures.push(format!(
                "{}: accepted, but onnxruntime-genai cannot run it: {verdict}",
                accepted[&folder]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "seed {seed:#x}: {} of {} cases failed:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}
