//! The learned router's model: what it reads from a request (features), the linear model
//! that turns them into a label, and its training. Shared by `switchyard router train` (the
//! host, natively) and `plugins/learned-router` (the classify stage, in WebAssembly), so the
//! features a model was trained on are exactly the ones it is asked about.
//!
//! Features, all from the request alone:
//! - hashed word unigrams and bigrams and character 3-grams of the messages' text (lower
//!   case, the first [`MAX_TEXT_BYTES`] bytes: the per-request work stays small and bounded),
//!   each `1 + ln(count)`, the hashed part scaled to unit length;
//! - the text's length, the number of messages, whether tools are offered or used, whether
//!   JSON was asked for, whether the text holds a code fence.
//!
//! The model is multinomial logistic regression (softmax over the labels, any number of
//! them), trained by stochastic gradient descent with L2 regularisation; [`cross_validate`]
//! gives the held-out accuracy of k-fold cross-validation.

use serde_json::{Value, json};

/// Text read per request, in bytes (the start of the conversation's text).
pub const MAX_TEXT_BYTES: usize = 4096;
/// Dense features after the hashed ones: length, messages, tools, JSON, code.
pub const EXTRA: usize = 5;
/// The model file's format version.
pub const FORMAT: u64 = 1;

/// What the features are computed from.
#[derive(Debug, Default, Clone)]
pub struct Input<'a> {
    /// The messages' text (and a completion's prompt), in order.
    pub texts: Vec<&'a str>,
    /// How many messages the conversation has.
    pub messages: usize,
    /// Tools offered, or tool calls/results in the conversation.
    pub has_tools: bool,
    /// `response_format` asks for JSON.
    pub wants_json: bool,
}

impl<'a> Input<'a> {
    /// The input of an OpenAI request body (chat `messages`, or a `prompt`). Unknown
    /// shapes contribute nothing rather than fail: a training line is checked by the caller.
    pub fn from_request(body: &'a Value) -> Input<'a> {
        let mut input = Input::default();
        if let Some(messages) = body.get("messages").and_then(Value::as_array) {
            input.messages = messages.len();
            for m in messages {
                match m.get("content") {
                    Some(Value::String(s)) => input.texts.push(s),
                    Some(Value::Array(parts)) => input.texts.extend(
                        parts
                            .iter()
                            .filter_map(|p| p.get("text").and_then(Value::as_str)),
                    ),
                    _ => {}
                }
                let has_calls = m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .is_some_and(|c| !c.is_empty());
                // The gateway reads the legacy `function` role as `tool`.
                if has_calls
                    || matches!(
                        m.get("role").and_then(Value::as_str),
                        Some("tool" | "function")
                    )
                {
                    input.has_tools = true;
                }
            }
        }
        if let Some(p) = body.get("prompt").and_then(Value::as_str) {
            input.texts.push(p);
        }
        if body
            .get("tools")
            .and_then(Value::as_array)
            .is_some_and(|t| !t.is_empty())
        {
            input.has_tools = true;
        }
        input.wants_json = matches!(
            body.pointer("/response_format/type")
                .and_then(Value::as_str),
            Some("json_object" | "json_schema")
        );
        input
    }
}

/// A request's features, sparse: sorted indices and their values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Features {
    pub index: Vec<u32>,
    pub value: Vec<f32>,
}

const FNV_OFFSET: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;

fn fnv(seed: u32, bytes: &[u8]) -> u32 {
    let mut h = FNV_OFFSET ^ seed;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// Largest `dim` whose buckets are counted in a bitmap (its words are scanned once per
/// request; 1024 words at this size); above it the hashes are sorted instead.
const BITMAP_DIM: u32 = 1 << 16;

thread_local! {
    /// The bitmap and counts of [`features`], reused across calls (a plugin instance runs
    /// one request at a time): all zero between calls.
    static BUCKETS: std::cell::RefCell<(Vec<u64>, Vec<u32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Compute the features of `input` for a model with `dim` hashed buckets.
///
/// This runs in the plugin on every request, so it works in one pass over the text with
/// no per-character allocation (ASCII takes a fast path) and counts the hashed n-grams in
/// a bitmap instead of sorting them; `tests::features_reference` is the plain statement of
/// what it computes, and the two must agree exactly (a model is trained on one and asked
/// with the other).
pub fn features(input: &Input<'_>, dim: u32) -> Features {
    let dim = dim.max(1);
    // " " + the lower-cased text with every run of non-alphanumeric characters folded to one
    // space: the character 3-grams are read with the leading space, the words without.
    let budget = input.texts.iter().map(|t| t.len() + 1).sum::<usize>();
    let mut padded = String::with_capacity(1 + budget.min(MAX_TEXT_BYTES + 4));
    padded.push(' ');
    // Whether the text (after the pad) ends with a space; the empty text does not.
    let mut space = false;
    let mut code = false;
    let mut total = 0usize;
    'outer: for t in &input.texts {
        total += t.len();
        code |= t.contains("```");
        for c in t.chars() {
            if padded.len() - 1 + c.len_utf8() > MAX_TEXT_BYTES {
                break 'outer;
            }
            if c.is_ascii_alphanumeric() {
                padded.push(c.to_ascii_lowercase());
                space = false;
            } else if !c.is_ascii() && c.is_alphanumeric() {
                padded.extend(c.to_lowercase());
                space = false;
            } else if !space {
                padded.push(' ');
                space = true;
            }
        }
        if !space {
            padded.push(' ');
            space = true;
        }
    }
    let text = &padded[1..];
    // A bucket is the hash modulo `dim`; for a power of two (the trainer's sizes) that is a
    // mask, and a division per n-gram is the slowest step left in this loop.
    let mask = dim.is_power_of_two().then(|| dim - 1);
    let bucket = |h: u32| match mask {
        Some(m) => h & m,
        None => h % dim,
    };
    let mut hashed: Vec<u32> = Vec::with_capacity(padded.len() * 3);
    let mut previous: Option<&str> = None;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        hashed.push(bucket(fnv(1, word.as_bytes())));
        if let Some(p) = previous {
            let h = fnv(fnv(2, p.as_bytes()), word.as_bytes());
            hashed.push(bucket(h));
        }
        previous = Some(word);
    }
    for w in padded.as_bytes().windows(3) {
        hashed.push(bucket(fnv(3, w)));
    }
    let mut f = Features {
        index: Vec::with_capacity(hashed.len() + EXTRA),
        value: Vec::with_capacity(hashed.len() + EXTRA),
    };
    // Most n-grams occur once: skip the logarithm then (ln 1 is exactly 0).
    let mut push = |index: u32, n: u32| {
        f.index.push(index);
        f.value
            .push(if n == 1 { 1.0 } else { 1.0 + (n as f32).ln() });
    };
    if dim <= BITMAP_DIM {
        BUCKETS.with(|b| {
            let (bits, counts) = &mut *b.borrow_mut();
            let words = (dim as usize).div_ceil(64);
            if bits.len() < words {
                bits.resize(words, 0);
            }
            if counts.len() < dim as usize {
                counts.resize(dim as usize, 0);
            }
            for &h in &hashed {
                bits[h as usize / 64] |= 1 << (h % 64);
                counts[h as usize] += 1;
            }
            // Set bits in ascending order: the buckets sorted, each once, left zeroed.
            for (w, word) in bits[..words].iter_mut().enumerate() {
                let mut rest = std::mem::take(word);
                while rest != 0 {
                    let i = w * 64 + rest.trailing_zeros() as usize;
                    rest &= rest - 1;
                    push(i as u32, std::mem::take(&mut counts[i]));
                }
            }
        });
    } else {
        hashed.sort_unstable();
        for run in hashed.chunk_by(|a, b| a == b) {
            push(run[0], run.len() as u32);
        }
    }
    let norm = f.value.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        f.value.iter_mut().for_each(|v| *v /= norm);
    }
    let extra = [
        ((1 + total) as f32).ln() / 8.0,
        ((1 + input.messages) as f32).ln() / 3.0,
        f32::from(u8::from(input.has_tools)),
        f32::from(u8::from(input.wants_json)),
        f32::from(u8::from(code)),
    ];
    for (k, v) in extra.into_iter().enumerate() {
        f.index.push(dim + k as u32);
        f.value.push(v);
    }
    f
}

/// A trained linear model: one weight row per label.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub labels: Vec<String>,
    /// Hashed buckets (the rows have `dim + EXTRA` weights).
    pub dim: u32,
    pub weights: Vec<Vec<f32>>,
    pub bias: Vec<f32>,
}

/// A prediction: the label's index and the model's probability for it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    pub label: usize,
    pub confidence: f32,
}

impl Model {
    fn zero(labels: Vec<String>, dim: u32) -> Model {
        let width = dim as usize + EXTRA;
        Model {
            weights: vec![vec![0.0; width]; labels.len()],
            bias: vec![0.0; labels.len()],
            labels,
            dim,
        }
    }

    /// The probability of each label (softmax of the scores).
    pub fn probabilities(&self, f: &Features) -> Vec<f32> {
        let mut scores: Vec<f32> = self
            .weights
            .iter()
            .zip(&self.bias)
            .map(|(w, b)| {
                b + f
                    .index
                    .iter()
                    .zip(&f.value)
                    .map(|(i, v)| w.get(*i as usize).copied().unwrap_or(0.0) * v)
                    .sum::<f32>()
            })
            .collect();
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for s in &mut scores {
            *s = (*s - max).exp();
            sum += *s;
        }
        scores.iter_mut().for_each(|s| *s /= sum);
        scores
    }

    /// The most probable label.
    pub fn predict(&self, f: &Features) -> Prediction {
        let p = self.probabilities(f);
        let (label, confidence) =
            p.iter()
                .copied()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (i, v)| {
                    if v > best.1 { (i, v) } else { best }
                });
        Prediction { label, confidence }
    }

    /// The model file: JSON with the format version, labels, `dim`, weights and biases.
    pub fn to_json(&self) -> String {
        // Six significant digits are plenty for a linear model and halve the file.
        let round = |v: &f32| -> Value {
            let r = format!("{v:.6e}").parse::<f64>().unwrap_or(0.0);
            json!(r)
        };
        let v = json!({
            "format": FORMAT,
            "kind": "switchyard-learned-router",
            "labels": self.labels,
            "dim": self.dim,
            "features": {"max_text_bytes": MAX_TEXT_BYTES, "extra": EXTRA},
            "bias": self.bias.iter().map(round).collect::<Vec<_>>(),
            "weights": self.weights.iter().map(|w| w.iter().map(round).collect::<Vec<_>>()).collect::<Vec<_>>(),
        });
        v.to_string()
    }

    /// Read a model file; the error says what is wrong with it.
    ///
    /// A plugin instance reads the model on its first call (and each warm instance is
    /// replaced after a bounded number of calls), so this is on the request path: the file
    /// is read straight into its typed shape, and only a file that does not fit it is read
    /// again as a JSON tree to say what is wrong.
    pub fn from_json(text: &str) -> Result<Model, String> {
        if let Ok(file) = serde_json::from_str::<ModelFile>(text)
            && let Some(model) = file.checked()
        {
            return Ok(model);
        }
        Model::from_json_tree(text)
    }

    /// [`Model::from_json`] through a JSON tree: slower, and names what is wrong.
    fn from_json_tree(text: &str) -> Result<Model, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        if v.get("format").and_then(Value::as_u64) != Some(FORMAT) {
            return Err(format!(
                "`format` must be {FORMAT} (a model written by `switchyard router train`)"
            ));
        }
        let labels: Vec<String> = v
            .get("labels")
            .and_then(Value::as_array)
            .ok_or("`labels` must be an array of strings")?
            .iter()
            .map(|l| l.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or("`labels` must be an array of strings")?;
        if labels.len() < 2 {
            return Err("`labels` must name at least two labels".into());
        }
        let dim = v
            .get("dim")
            .and_then(Value::as_u64)
            .filter(|d| (1..=1 << 24).contains(d))
            .ok_or("`dim` must be a number from 1 to 16777216")? as u32;
        let floats = |v: &Value, what: &str, len: usize| -> Result<Vec<f32>, String> {
            let a = v
                .as_array()
                .filter(|a| a.len() == len)
                .ok_or(format!("`{what}` must be an array of {len} numbers"))?;
            a.iter()
                .map(|x| x.as_f64().map(|x| x as f32))
                .collect::<Option<Vec<f32>>>()
                .ok_or(format!("`{what}` must hold numbers only"))
        };
        let bias = floats(v.get("bias").unwrap_or(&Value::Null), "bias", labels.len())?;
        let rows = v
            .get("weights")
            .and_then(Value::as_array)
            .filter(|r| r.len() == labels.len())
            .ok_or("`weights` must have one row per label")?;
        let width = dim as usize + EXTRA;
        let weights = rows
            .iter()
            .enumerate()
            .map(|(i, r)| floats(r, &format!("weights[{i}]"), width))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Model {
            labels,
            dim,
            weights,
            bias,
        })
    }
}

/// The model file's members the model is made of, as [`Model::to_json`] writes them.
/// Numbers are read as `f64` and narrowed to `f32`, exactly as the JSON-tree reading does.
#[derive(serde::Deserialize)]
struct ModelFile {
    format: u64,
    labels: Vec<String>,
    dim: u64,
    bias: Vec<f32>,
    weights: Vec<Vec<f32>>,
}

impl ModelFile {
    /// The model, when the file passes every check of [`Model::from_json_tree`].
    fn checked(self) -> Option<Model> {
        let width = usize::try_from(self.dim).ok()? + EXTRA;
        let fits = self.format == FORMAT
            && self.labels.len() >= 2
            && (1..=1 << 24).contains(&self.dim)
            && self.bias.len() == self.labels.len()
            && self.weights.len() == self.labels.len()
            && self.weights.iter().all(|w| w.len() == width);
        fits.then_some(Model {
            labels: self.labels,
            dim: self.dim as u32,
            weights: self.weights,
            bias: self.bias,
        })
    }
}

/// Training settings.
#[derive(Debug, Clone, Copy)]
pub struct TrainOptions {
    pub dim: u32,
    pub epochs: usize,
    pub learning_rate: f32,
    pub l2: f32,
    pub folds: usize,
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            dim: 4096,
            epochs: 30,
            learning_rate: 0.5,
            l2: 1e-5,
            folds: 5,
            seed: 42,
        }
    }
}

/// One labelled example: its features and the index of its label.
#[derive(Debug, Clone)]
pub struct Example {
    pub features: Features,
    pub label: usize,
}

/// A small deterministic generator (xorshift64*): the same data and seed give the same
/// folds and the same model.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// Fit a model to `examples` (indices into `labels`) by SGD on the softmax loss.
pub fn train(examples: &[&Example], labels: &[String], o: &TrainOptions) -> Model {
    let mut m = Model::zero(labels.to_vec(), o.dim);
    let mut order: Vec<usize> = (0..examples.len()).collect();
    let mut rng = Rng(o.seed.max(1));
    for epoch in 0..o.epochs {
        rng.shuffle(&mut order);
        let lr = o.learning_rate / (1.0 + epoch as f32 * 0.1);
        for &k in &order {
            let ex = examples[k];
            let p = m.probabilities(&ex.features);
            for (c, pc) in p.iter().enumerate() {
                let g = pc - f32::from(u8::from(c == ex.label));
                let w = &mut m.weights[c];
                for (i, v) in ex.features.index.iter().zip(&ex.features.value) {
                    let wi = &mut w[*i as usize];
                    *wi -= lr * (g * v + o.l2 * *wi);
                }
                m.bias[c] -= lr * g;
            }
        }
    }
    m
}

/// The share of `examples` the model labels right.
pub fn accuracy(m: &Model, examples: &[&Example]) -> f64 {
    if examples.is_empty() {
        return 0.0;
    }
    let right = examples
        .iter()
        .filter(|e| m.predict(&e.features).label == e.label)
        .count();
    right as f64 / examples.len() as f64
}

/// k-fold cross-validation: shuffle once (by `seed`), train on k-1 folds, measure on the one
/// held out; the accuracy of each fold.
pub fn cross_validate(examples: &[Example], labels: &[String], o: &TrainOptions) -> Vec<f64> {
    let folds = o.folds.clamp(2, examples.len().max(2));
    let mut order: Vec<usize> = (0..examples.len()).collect();
    Rng(o.seed.max(1) ^ 0x9e37_79b9_7f4a_7c15).shuffle(&mut order);
    (0..folds)
        .map(|f| {
            let (mut train_set, mut test_set) = (Vec::new(), Vec::new());
            for (pos, &i) in order.iter().enumerate() {
                if pos % folds == f {
                    test_set.push(&examples[i]);
                } else {
                    train_set.push(&examples[i]);
                }
            }
            accuracy(&train(&train_set, labels, o), &test_set)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(text: &str, label: usize, dim: u32) -> Example {
        let input = Input {
            texts: vec![text],
            messages: 1,
            ..Input::default()
        };
        Example {
            features: features(&input, dim),
            label,
        }
    }

    /// What [`features`] computes, stated plainly (the way it was first written).
    fn features_reference(input: &Input<'_>, dim: u32) -> Features {
        let dim = dim.max(1);
        // Lower-cased text with every run of non-alphanumeric characters folded to one space.
        let mut text = String::with_capacity(MAX_TEXT_BYTES.min(1024));
        let mut code = false;
        let mut total = 0usize;
        'outer: for t in &input.texts {
            total += t.len();
            code |= t.contains("```");
            for c in t.chars() {
                if text.len() + c.len_utf8() > MAX_TEXT_BYTES {
                    break 'outer;
                }
                if c.is_alphanumeric() {
                    text.extend(c.to_lowercase());
                } else if !text.ends_with(' ') {
                    text.push(' ');
                }
            }
            if !text.ends_with(' ') {
                text.push(' ');
            }
        }
        let mut hashed: Vec<u32> = Vec::with_capacity(text.len() * 2);
        let mut previous: Option<&str> = None;
        for word in text.split(' ').filter(|w| !w.is_empty()) {
            hashed.push(fnv(1, word.as_bytes()) % dim);
            if let Some(p) = previous {
                let h = fnv(fnv(2, p.as_bytes()), word.as_bytes());
                hashed.push(h % dim);
            }
            previous = Some(word);
        }
        let padded = format!(" {text}");
        for w in padded.as_bytes().windows(3) {
            hashed.push(fnv(3, w) % dim);
        }
        hashed.sort_unstable();
        let mut f = Features::default();
        let mut i = 0;
        while i < hashed.len() {
            let mut j = i;
            while j < hashed.len() && hashed[j] == hashed[i] {
                j += 1;
            }
            f.index.push(hashed[i]);
            f.value.push(1.0 + ((j - i) as f32).ln());
            i = j;
        }
        let norm = f.value.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            f.value.iter_mut().for_each(|v| *v /= norm);
        }
        let extra = [
            ((1 + total) as f32).ln() / 8.0,
            ((1 + input.messages) as f32).ln() / 3.0,
            f32::from(u8::from(input.has_tools)),
            f32::from(u8::from(input.wants_json)),
            f32::from(u8::from(code)),
        ];
        for (k, v) in extra.into_iter().enumerate() {
            f.index.push(dim + k as u32);
            f.value.push(v);
        }
        f
    }

    #[test]
    fn features_match_the_reference_exactly() {
        let long = "Word, WORD; wörd ".repeat(400);
        let edge = format!("{}ÄÖÜ tail", "a".repeat(MAX_TEXT_BYTES - 3));
        let cases: Vec<Vec<&str>> = vec![
            vec![],
            vec![""],
            vec!["What is the capital of France? Answer in one word."],
            vec!["  ...leading punctuation", "and a second message!"],
            vec![
                "Straße İstanbul ΣΊΣΥΦΟΣ 東京 x²",
                "```rust\nfn main() {}\n```",
            ],
            vec![&long],
            vec![&edge, "after the cut"],
            vec!["the the the the a a b", "the"],
        ];
        for texts in cases {
            for dim in [1, 2, 7, 64, 4096, BITMAP_DIM + 1, 1 << 20] {
                let input = Input {
                    texts: texts.clone(),
                    messages: texts.len(),
                    has_tools: dim % 2 == 0,
                    wants_json: false,
                };
                assert_eq!(
                    features(&input, dim),
                    features_reference(&input, dim),
                    "texts {texts:?}, dim {dim}"
                );
            }
        }
    }

    #[test]
    fn features_are_bounded_sorted_and_unit_length() {
        let long = "word ".repeat(10_000);
        let f = features(
            &Input {
                texts: vec![&long],
                messages: 1,
                ..Input::default()
            },
            64,
        );
        assert!(f.index.windows(2).all(|w| w[0] < w[1]));
        let hashed: f32 = f
            .index
            .iter()
            .zip(&f.value)
            .filter(|(i, _)| **i < 64)
            .map(|(_, v)| v * v)
            .sum();
        assert!((hashed - 1.0).abs() < 1e-4);
        assert_eq!(f.index.len(), f.value.len());
    }

    #[test]
    fn learns_a_separable_split_and_round_trips_through_json() {
        let dim = 256;
        let mut data = Vec::new();
        for i in 0..40 {
            data.push(ex(&format!("reset my password please {i}"), 0, dim));
            data.push(ex(
                &format!("refactor the distributed cache eviction {i}"),
                1,
                dim,
            ));
        }
        let labels = vec!["local".to_string(), "premium".to_string()];
        let o = TrainOptions {
            dim,
            ..TrainOptions::default()
        };
        let acc = cross_validate(&data, &labels, &o);
        assert!(acc.iter().all(|a| *a > 0.95), "{acc:?}");
        let refs: Vec<&Example> = data.iter().collect();
        let m = train(&refs, &labels, &o);
        let back = Model::from_json(&m.to_json()).expect("reads its own output");
        let f = ex("please reset my password", 0, dim).features;
        assert_eq!(back.predict(&f).label, 0);
        assert!(back.predict(&f).confidence > 0.5);
    }

    #[test]
    fn the_typed_read_gives_the_model_the_tree_read_gives() {
        let dim = 64;
        let data: Vec<Example> = (0..20)
            .map(|i| ex(&format!("text number {i} with {}", i % 3), i % 2, dim))
            .collect();
        let refs: Vec<&Example> = data.iter().collect();
        let labels = vec!["a".to_string(), "b".to_string()];
        let o = TrainOptions {
            dim,
            ..TrainOptions::default()
        };
        let text = train(&refs, &labels, &o).to_json();
        let typed = serde_json::from_str::<ModelFile>(&text)
            .ok()
            .and_then(ModelFile::checked)
            .expect("a trained model's file fits the typed shape");
        assert_eq!(Some(typed), Model::from_json_tree(&text).ok());
        // Integers and a file that only the tree read explains.
        let ints = r#"{"format":1,"labels":["a","b"],"dim":1,"bias":[0,1],"weights":[[1,-2,0,0,0,0],[0,0,0,0,0,3]]}"#;
        assert_eq!(Model::from_json(ints), Model::from_json_tree(ints));
        assert!(Model::from_json(ints).is_ok());
        let short = r#"{"format":1,"labels":["a","b"],"dim":1,"bias":[0,1],"weights":[[1],[0]]}"#;
        assert_eq!(Model::from_json(short), Model::from_json_tree(short));
    }

    #[test]
    fn a_broken_model_file_is_refused_with_the_reason() {
        assert!(Model::from_json("{}").unwrap_err().contains("format"));
        let bad = r#"{"format":1,"labels":["a","b"],"dim":2,"bias":[0,0],"weights":[[0]]}"#;
        assert!(Model::from_json(bad).unwrap_err().contains("weights"));
    }
}
