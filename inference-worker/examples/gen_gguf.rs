//! Writes a Llama-shaped GGUF with random weights (`switchyard_worker::synth`): a byte
//! vocabulary, every matrix in one tensor type, so GPU runs need no download and a
//! Llama-2-7B-shaped file streams the bytes a real one of that type does.
//!
//! `cargo run --release -p switchyard-worker --example gen_gguf -- --shape tiny|7b --type q4_0 --out FILE [--v-type q6_k] [--seed N]`
//!
//! Types: f32, f16, bf16, q4_0, q4_1, q8_0, q4_k, q5_k, q6_k. A 7b file takes 3.8 GB (Q4_0)
//! or 7.2 GB (Q8_0) and about 10 to 30 seconds.

use std::io::{BufWriter, Write};

use switchyard_worker::synth::{self, Shape, Spec};

fn value(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: gen_gguf --shape tiny|7b --type TYPE --out FILE [--v-type TYPE] [--seed N]";
    let shape_name = value(&args, "--shape").unwrap_or_else(|| "tiny".into());
    let shape = Shape::named(&shape_name)
        .ok_or_else(|| format!("--shape {shape_name}: expected tiny or 7b\n{usage}"))?;
    let ty_name = value(&args, "--type").ok_or(usage)?;
    let ty = synth::type_named(&ty_name).ok_or_else(|| format!("--type {ty_name}: unknown"))?;
    let v_ty = match value(&args, "--v-type") {
        None => None,
        Some(t) => Some(synth::type_named(&t).ok_or_else(|| format!("--v-type {t}: unknown"))?),
    };
    let seed = value(&args, "--seed")
        .map(|s| s.parse::<u64>().map_err(|e| format!("--seed {s}: {e}")))
        .transpose()?
        .unwrap_or(1);
    let out = value(&args, "--out").ok_or(usage)?;
    let spec = Spec {
        shape,
        ty,
        v_ty,
        seed,
    };
    let file = std::fs::File::create(&out).map_err(|e| format!("{out}: {e}"))?;
    let mut w = BufWriter::with_capacity(8 << 20, file);
    let t = std::time::Instant::now();
    let mut next = 0u64;
    let total = synth::write(&spec, &mut w, &mut |done, total| {
        if done >= next {
            eprint!("\rgen_gguf: {out}: {} / {} MB", done >> 20, total >> 20);
            next = done + total / 20;
        }
    })
    .and_then(|n| w.flush().map(|()| n))
    .map_err(|e| format!("{out}: {e}"))?;
    eprintln!(
        "\rgen_gguf: {out}: {shape_name} {ty_name}, {} MB in {:.1} s",
        total >> 20,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
