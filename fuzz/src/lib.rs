//! Fuzzing on stable Rust for the code that reads bytes from outside: the request splice and
//! parse, the SSE scanner, config parsing, the WIT conversion, the GGUF reader and the
//! tokenizer.
//!
//! cargo-fuzz needs a nightly toolchain, which CI does not have, so the loop is ours: inputs
//! start from the committed corpus (`fuzz/corpus/<target>/`), are mutated the ways that
//! break parsers (bit flips, boundary integers over length fields, inserted and deleted runs,
//! splices of two inputs, the target's own tokens), and every input a target accepts joins a
//! pool that later mutations start from, so the search reaches past the first checks. Each
//! target also checks a property (splitting a stream anywhere changes nothing a scanner
//! reports; a spliced body still parses to the model it names), not only the absence of a
//! panic. A panicking input is written to `target/fuzz/crashes/<target>/` to become a corpus
//! file once fixed.

pub mod targets;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What a target reports of one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The input was accepted (parsed); it joins the pool mutations start from.
    Accepted,
    /// Rejected with an error, as bad input should be.
    Rejected,
}

/// One fuzz target: a name (its corpus folder), the tokens its format is made of, the largest
/// input worth trying, and the function under test. The function panics on a broken property.
pub struct Target {
    pub name: &'static str,
    pub dictionary: &'static [&'static [u8]],
    pub max_len: usize,
    pub run: fn(&[u8]) -> Verdict,
}

/// A failing input and what went wrong.
#[derive(Debug)]
pub struct Crash {
    pub target: &'static str,
    pub input: Vec<u8>,
    pub message: String,
    pub saved: Option<PathBuf>,
}

/// How much of a run there is: a number of inputs or a time, whichever ends first.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub inputs: u64,
    pub time: Duration,
}

/// Counts of one target's run.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub inputs: u64,
    pub accepted: u64,
    pub pool: usize,
}

/// The corpus files of `target` (sorted, so a seed means the same run everywhere).
pub fn corpus(dir: &Path, target: &str) -> std::io::Result<Vec<Vec<u8>>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(target))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files.iter().map(std::fs::read).collect()
}

/// Run `f` on `input`, turning a panic into its message.
pub fn check(target: &Target, input: &[u8]) -> Result<Verdict, String> {
    catch_unwind(AssertUnwindSafe(|| (target.run)(input))).map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic with a non-string payload".into())
    })
}

/// Mutate from `seeds` for `budget`; the first failure ends the run.
pub fn fuzz(
    target: &Target,
    seeds: &[Vec<u8>],
    seed: u64,
    budget: Budget,
    crash_dir: Option<&Path>,
) -> (Stats, Option<Crash>) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut pool: Vec<Vec<u8>> = Vec::new();
    let mut stats = Stats::default();
    let fail = |input: Vec<u8>, message: String, stats: Stats| {
        let saved = crash_dir.and_then(|d| save(d, target.name, &input));
        (
            stats,
            Some(Crash {
                target: target.name,
                input,
                message,
                saved,
            }),
        )
    };
    for s in seeds {
        stats.inputs += 1;
        match check(target, s) {
            Ok(Verdict::Accepted) => {
                stats.accepted += 1;
                pool.push(s.clone());
            }
            Ok(Verdict::Rejected) => {}
            Err(m) => return fail(s.clone(), m, stats),
        }
    }
    if pool.is_empty() {
        pool.extend(seeds.iter().cloned());
    }
    if pool.is_empty() {
        pool.push(Vec::new());
    }
    let start = Instant::now();
    let mut n = 0u64;
    while n < budget.inputs && (!n.is_multiple_of(64) || start.elapsed() < budget.time) {
        n += 1;
        let base = &pool[rng.usize(..pool.len())];
        let other = &pool[rng.usize(..pool.len())];
        let mut input = base.clone();
        for _ in 0..1 + rng.usize(..4) {
            mutate(&mut rng, &mut input, other, target.dictionary);
        }
        input.truncate(target.max_len);
        stats.inputs += 1;
        match check(target, &input) {
            Ok(Verdict::Accepted) => {
                stats.accepted += 1;
                // A bounded pool: new accepted inputs replace random old ones.
                if pool.len() < 512 {
                    pool.push(input);
                } else {
                    let i = rng.usize(..pool.len());
                    pool[i] = input;
                }
            }
            Ok(Verdict::Rejected) => {}
            Err(m) => {
                stats.pool = pool.len();
                return fail(input, m, stats);
            }
        }
    }
    stats.pool = pool.len();
    (stats, None)
}

fn save(dir: &Path, target: &str, input: &[u8]) -> Option<PathBuf> {
    let dir = dir.join(target);
    std::fs::create_dir_all(&dir).ok()?;
    // FNV-1a: a stable name, so the same crash found twice is one file.
    let h = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let path = dir.join(format!("crash-{h:016x}"));
    std::fs::write(&path, input).ok()?;
    Some(path)
}

/// Integers that sit on the boundaries parsers get wrong.
const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    7,
    8,
    16,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
];

/// One mutation of `input`.
fn mutate(rng: &mut fastrand::Rng, input: &mut Vec<u8>, other: &[u8], dict: &[&[u8]]) {
    let len = input.len();
    match rng.u8(..10) {
        // Flip a bit.
        0 if len > 0 => {
            let i = rng.usize(..len);
            input[i] ^= 1 << rng.u8(..8);
        }
        // A random or boundary byte.
        1 if len > 0 => {
            let i = rng.usize(..len);
            input[i] = match rng.u8(..3) {
                0 => rng.u8(..),
                1 => *rng
                    .choice(&[0u8, 0x7f, 0x80, 0xff, b'"', b'\\', b'\n', b'\r'][..])
                    .unwrap_or(&0),
                _ => *rng.choice(&b"{}[],:-.0123456789eE "[..]).unwrap_or(&b' '),
            };
        }
        // A boundary integer over 1, 2, 4 or 8 bytes (length and count fields).
        2 if len > 0 => {
            let width = *rng.choice(&[1usize, 2, 4, 8][..]).unwrap_or(&4);
            let at = rng.usize(..len);
            let v = rng.choice(INTERESTING).copied().unwrap_or(0);
            let v = if rng.bool() { v } else { v.wrapping_neg() };
            for (k, b) in v.to_le_bytes().iter().take(width).enumerate() {
                if let Some(slot) = input.get_mut(at + k) {
                    *slot = *b;
                }
            }
        }
        // Delete a run.
        3 if len > 0 => {
            let at = rng.usize(..len);
            let n = 1 + rng.usize(..(len - at).min(64));
            input.drain(at..at + n);
        }
        // Duplicate a run (repeated members, nested depth).
        4 if len > 0 => {
            let at = rng.usize(..len);
            let n = 1 + rng.usize(..(len - at).min(64));
            let run: Vec<u8> = input[at..at + n].to_vec();
            let times = if rng.u8(..8) == 0 {
                1 + rng.usize(..64)
            } else {
                1
            };
            let to = rng.usize(..=len);
            for _ in 0..times {
                input.splice(to..to, run.iter().copied());
            }
        }
        // Splice: the head of this input and the tail of another.
        5 if !other.is_empty() => {
            let cut = rng.usize(..=len);
            let from = rng.usize(..other.len());
            input.truncate(cut);
            input.extend_from_slice(&other[from..]);
        }
        // Truncate.
        6 if len > 0 => input.truncate(rng.usize(..len)),
        // A token of the format, inserted or written over.
        7 | 8 if !dict.is_empty() => {
            let word = dict[rng.usize(..dict.len())];
            let at = rng.usize(..=len);
            if rng.bool() || at + word.len() > len {
                input.splice(at..at, word.iter().copied());
            } else {
                input[at..at + word.len()].copy_from_slice(word);
            }
        }
        // Random bytes inserted.
        _ => {
            let at = rng.usize(..=len);
            let n = 1 + rng.usize(..8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
            input.splice(at..at, bytes);
        }
    }
}
