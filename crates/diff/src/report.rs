//! Renders a [`Diff`]: the terminal report (verdict first, one screen, then
//! the per-stage table) and JSON. The HTML page is in [`crate::html`].

use std::fmt::Write as _;

use crate::compare::{Basis, Diff, Origin, StageDiff};

pub use plumb_trace::paint::Paint;

pub fn g(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(x) if x.is_nan() => "nan".into(),
        Some(x) if x.is_infinite() => "inf".into(),
        Some(0.0) => "0".into(),
        Some(x) if x.abs() >= 1e4 || x.abs() < 1e-3 => format!("{x:.2e}"),
        Some(x) => format!("{x:.4}"),
    }
}

fn cos_str(c: Option<f64>) -> String {
    match c {
        None => "-".into(),
        Some(c) if c >= 0.999_999_5 => format!("{c:.7}"),
        Some(c) => format!("{c:.6}"),
    }
}

fn origin_text(s: &StageDiff) -> &'static str {
    match s.origin {
        Origin::Introduced => "introduced here",
        Origin::Inherited => "inherited",
        Origin::Clean => "",
    }
}

/// The verdict: one screen.
pub fn verdict(d: &Diff, paint: Paint) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}  A: {}   B (reference): {}", paint.bold("plumb diff"), d.engine_a, d.engine_b);
    for n in &d.notes {
        let _ = writeln!(s, "{}", paint.yellow(&format!("note: {n}")));
    }
    let compared = d.stages.iter().filter(|s| !matches!(s.basis, Basis::OnlyA | Basis::OnlyB)).count();
    let only_a: Vec<&str> = d.stages.iter().filter(|s| s.basis == Basis::OnlyA).map(|s| s.key.as_str()).collect();
    let only_b: Vec<&str> = d.stages.iter().filter(|s| s.basis == Basis::OnlyB).map(|s| s.key.as_str()).collect();
    let _ = writeln!(s, "stages compared: {compared}");
    if !only_a.is_empty() {
        let _ = writeln!(s, "only in A ({}): {}", only_a.len(), abbreviate(&only_a));
    }
    if !only_b.is_empty() {
        let _ = writeln!(s, "only in B ({}): {}", only_b.len(), abbreviate(&only_b));
    }
    match d.first {
        Some(i) => {
            let f = &d.stages[i];
            let router = d
                .routers
                .iter()
                .find(|r| Some(r.layer) == plumb_trace::stage::parse_key(&f.key).and_then(|k| k.1))
                .filter(|_| f.key.ends_with(".ffn_experts"));
            let why = match &f.basis {
                Basis::Tensors if router.is_some() => {
                    let r = router.expect("checked");
                    let hard = r.flips.iter().filter(|x| !x.near_tie).count();
                    format!(
                        "{hard} of {} tokens sent to other experts where the reference was not nearly tied",
                        r.tokens
                    )
                }
                Basis::Tensors => {
                    format!(
                        "NMSE {} > {} (cosine {}, max |Δ| {} at token {}, feature {})",
                        g(f.nmse),
                        g(Some(f.bounds.nmse)),
                        cos_str(f.cosine),
                        g(f.max_abs),
                        f.max_at.map(|p| p.0).unwrap_or(0),
                        f.max_at.map(|p| p.1).unwrap_or(0)
                    )
                }
                Basis::Stats | Basis::LastTokenStats => {
                    format!("stats differ by {} of std (bound {})", g(f.stats_rel), g(Some(f.bounds.stats)))
                }
                Basis::Mismatch { a, b } => format!("shapes differ: A {a:?}, B {b:?}"),
                _ => String::new(),
            };
            let _ = writeln!(
                s,
                "{} first divergence at {} — {}",
                paint.red("DIVERGED"),
                paint.bold(&f.key),
                origin_text(f)
            );
            let _ = writeln!(s, "  {why}");
            let inputs: Vec<String> = f
                .inputs
                .iter()
                .filter_map(|k| d.stages.iter().find(|s| &s.key == k))
                .map(|s| format!("{} rel err {}", s.key, g(s.err())))
                .collect();
            if !inputs.is_empty() {
                let _ = writeln!(s, "  inputs: {}", inputs.join(", "));
            }
            if d.chain.len() > 1 {
                let links: Vec<String> =
                    d.chain.iter().take(12).map(|c| format!("{} {}×", short(&c.key), factor(c.factor))).collect();
                let more = if d.chain.len() > 12 { " → …" } else { "" };
                let _ = writeln!(s, "  chain (error relative to the first): {}{more}", links.join(" → "));
            }
        }
        None if d.hard_flips > 0 => {
            let _ = writeln!(
                s,
                "{} every stage within bounds, but {} top-1 flips are not near-ties",
                paint.red("DIVERGED"),
                d.hard_flips
            );
        }
        None => {
            let worst = d
                .stages
                .iter()
                .filter(|s| s.nmse.is_some())
                .max_by(|a, b| a.nmse.partial_cmp(&b.nmse).unwrap_or(std::cmp::Ordering::Equal));
            let w = worst
                .map(|w| format!(" (worst NMSE {} at {}, cosine {})", g(w.nmse), w.key, cos_str(w.cosine)))
                .unwrap_or_default();
            let _ = writeln!(s, "{} every stage within bounds{w}", paint.green_bold("PARITY"));
        }
    }
    if !d.logits.is_empty() {
        let n = d.logits.len();
        let agree = d.logits.iter().filter(|p| p.top1_agree).count();
        let ties = d.logits.iter().filter(|p| p.near_tie).count();
        let overlap = d.logits.iter().map(|p| p.top5_overlap).sum::<f64>() / n as f64;
        let kl = d.logits.iter().map(|p| p.kl).fold(0.0, f64::max);
        let _ = writeln!(
            s,
            "logits: top-1 agree {agree}/{n}{}, top-5 overlap {:.0}%, max KL(B‖A) {}",
            if ties > 0 {
                format!(" ({ties} flips at near-ties, reference margin < {})", d.tie_margin)
            } else {
                String::new()
            },
            overlap * 100.0,
            g(Some(kl))
        );
        for p in d.logits.iter().filter(|p| !p.top1_agree) {
            let _ = writeln!(s, "{}", flip_line(p));
        }
    }
    if !d.routers.is_empty() {
        let (n, agree) = d.routers.iter().fold((0, 0), |(n, a), r| (n + r.tokens, a + r.agree));
        let ties = d.routers.iter().flat_map(|r| &r.flips).filter(|f| f.near_tie).count();
        let _ = writeln!(
            s,
            "routers: same experts for {agree}/{n} token-layers over {} layers{}",
            d.routers.len(),
            if ties > 0 {
                format!(" ({ties} flips at near-ties, reference margin < {})", d.tie_margin)
            } else {
                String::new()
            }
        );
        let flips: Vec<(usize, &crate::compare::RouterFlip)> =
            d.routers.iter().flat_map(|r| r.flips.iter().map(move |f| (r.layer, f))).collect();
        for (layer, f) in flips.iter().take(12) {
            let _ = writeln!(s, "{}", router_flip_line(*layer, f));
        }
        if flips.len() > 12 {
            let _ = writeln!(s, "  … {} more (--json lists them all)", flips.len() - 12);
        }
    }
    s
}

/// One token whose experts differ, with the reference's router margin.
pub(crate) fn router_flip_line(layer: usize, f: &crate::compare::RouterFlip) -> String {
    let ids = |v: &[f32]| v.iter().map(|x| format!("{x}")).collect::<Vec<_>>().join(", ");
    format!(
        "  blk.{layer} token {}: experts A [{}] vs B [{}], reference margin {}{}",
        f.token,
        ids(&f.experts_a),
        ids(&f.experts_b),
        g(f.ref_margin),
        if f.near_tie { " (near-tie)" } else { "" }
    )
}

/// One top-1 flip of the logits, with the reference's margin there.
pub(crate) fn flip_line(p: &crate::compare::PositionLogits) -> String {
    format!(
        "  position {}: A {} vs B {}, reference margin {}{}",
        p.position,
        p.top1_a,
        p.top1_b,
        g(Some(p.ref_margin)),
        if p.near_tie { " (near-tie)" } else { "" }
    )
}

fn factor(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.0}")
    } else if x >= 0.1 {
        format!("{x:.2}")
    } else {
        format!("{x:.1e}")
    }
}

fn short(key: &str) -> String {
    key.strip_prefix("blk.").map(|r| format!("L{r}")).unwrap_or_else(|| key.to_string())
}

fn abbreviate(keys: &[&str]) -> String {
    if keys.len() <= 6 {
        keys.join(", ")
    } else {
        format!("{}, … {}", keys[..4].join(", "), keys[keys.len() - 1])
    }
}

/// The per-stage table.
pub fn details(d: &Diff, paint: Paint) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}",
        paint.dim(&format!(
            "{:<24} {:>10} {:>9} {:>9} {:>14} {:>9} {:>9} {:>8} {:>8}  {}",
            "stage", "cosine", "nmse", "max|Δ|", "at (tok,feat)", "mean|Δ|", "rel L2", "std A/B", "growth", "verdict"
        ))
    );
    for st in &d.stages {
        let at = st.max_at.map(|(t, f)| format!("({t},{f})")).unwrap_or_else(|| "-".into());
        let verdict = match (&st.basis, st.over) {
            (Basis::OnlyA, _) => "only in A".to_string(),
            (Basis::OnlyB, _) => "only in B".to_string(),
            (Basis::Mismatch { a, b }, _) => format!("shape A {a:?} B {b:?}"),
            (b, true) => format!("OVER {}{}", origin_text(st), if *b != Basis::Tensors { " (stats)" } else { "" }),
            (Basis::Stats, false) => "ok (stats)".into(),
            (Basis::LastTokenStats, false) => "ok (last-token stats)".into(),
            _ => "ok".into(),
        };
        let line = format!(
            "{:<24} {:>10} {:>9} {:>9} {:>14} {:>9} {:>9} {:>8} {:>8}  {}",
            st.key,
            cos_str(st.cosine),
            g(st.nmse.or(st.stats_rel)),
            g(st.max_abs),
            at,
            g(st.mean_abs),
            g(st.rel_l2),
            g(st.std_ratio),
            st.growth.map(|x| format!("{x:.1}×")).unwrap_or_else(|| "-".into()),
            verdict
        );
        let _ = writeln!(s, "{}", if st.over { paint.red(&line) } else { line });
    }
    s
}

pub fn json(d: &Diff) -> String {
    let first = d.first.map(|i| d.stages[i].key.clone());
    json_with(d, d.diverged(), ("first_divergence", first))
}

/// A report as pretty JSON, with `diverged` and the first stage at fault
/// (under `key`) added at the top level.
pub(crate) fn json_with<T: serde::Serialize>(r: &T, diverged: bool, (key, first): (&str, Option<String>)) -> String {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("diverged".into(), serde_json::Value::Bool(diverged));
        o.insert(key.into(), first.map(serde_json::Value::String).unwrap_or_default());
    }
    // NaN/Inf are not JSON: serde_json writes them as null.
    serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
}
