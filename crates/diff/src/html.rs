//! The HTML report: one self-contained page (inline SVG and CSS, no
//! scripts, nothing fetched) with the verdict, a heatmap of the error per
//! stage across layers, the residual stream's std per layer for A and B,
//! the divergence chain, and the per-stage table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use plumb_trace::stage::{parse_key, Stage};
use plumb_trace::Trace;

use crate::compare::{Basis, Diff};
use crate::report::g;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Colour for log10(NMSE): green at ≤ -12, yellow at the bound, red above.
fn heat(nmse: Option<f64>, bound: f64, over: bool) -> String {
    let Some(n) = nmse else { return "#e5e7eb".into() };
    if over {
        let t = ((n.max(1e-30).log10() - bound.log10()) / 6.0).clamp(0.0, 1.0);
        let l = 60.0 - 25.0 * t;
        return format!("hsl(0, 80%, {l:.0}%)");
    }
    let lo = -12.0;
    let hi = bound.log10();
    let t = ((n.max(1e-30).log10() - lo) / (hi - lo)).clamp(0.0, 1.0);
    let hue = 130.0 - 80.0 * t;
    format!("hsl({hue:.0}, 65%, {:.0}%)", 45.0 + 10.0 * t)
}

/// NMSE (or stats error), its bound, over or not, and the tooltip.
type Cell = (Option<f64>, f64, bool, String);

fn heatmap(d: &Diff) -> String {
    let mut layers: Vec<usize> = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    let mut cells: BTreeMap<(Stage, usize), Cell> = BTreeMap::new();
    for s in &d.stages {
        if let Some((st, Some(l))) = parse_key(&s.key) {
            if !layers.contains(&l) {
                layers.push(l);
            }
            if !stages.contains(&st) {
                stages.push(st);
            }
            let tip = format!("{}: NMSE {} cosine {}", s.key, g(s.nmse.or(s.stats_rel)), g(s.cosine));
            cells.insert((st, l), (s.nmse.or(s.stats_rel), s.bounds.nmse, s.over, tip));
        }
    }
    layers.sort();
    stages.sort();
    if layers.is_empty() {
        return "<p>No per-layer stages.</p>".into();
    }
    let (cw, ch, left, top) = (22.0, 16.0, 120.0, 24.0);
    let w = left + cw * layers.len() as f64 + 10.0;
    let h = top + ch * stages.len() as f64 + 10.0;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-size="10" font-family="monospace">"#
    );
    for (i, l) in layers.iter().enumerate() {
        let _ = write!(s, r#"<text x="{}" y="16" text-anchor="middle">{l}</text>"#, left + cw * i as f64 + cw / 2.0);
    }
    for (j, st) in stages.iter().enumerate() {
        let y = top + ch * j as f64;
        let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#, left - 6.0, y + ch - 4.0, st.name());
        for (i, l) in layers.iter().enumerate() {
            let x = left + cw * i as f64;
            match cells.get(&(*st, *l)) {
                Some((n, b, over, tip)) => {
                    let _ = write!(
                        s,
                        r#"<rect x="{x}" y="{y}" width="{}" height="{}" fill="{}" stroke="{}"><title>{}</title></rect>"#,
                        cw - 1.0,
                        ch - 1.0,
                        heat(*n, *b, *over),
                        if *over { "#7f1d1d" } else { "none" },
                        esc(tip)
                    );
                }
                None => {
                    let _ = write!(
                        s,
                        r##"<rect x="{x}" y="{y}" width="{}" height="{}" fill="#f3f4f6"/>"##,
                        cw - 1.0,
                        ch - 1.0
                    );
                }
            }
        }
    }
    s.push_str("</svg>");
    s
}

/// A line chart of layer_out std per layer for A and B (log scale).
fn std_chart(a: &Trace, b: &Trace) -> String {
    let series = |t: &Trace| -> Vec<(usize, f64)> {
        t.stats
            .iter()
            .filter_map(|(k, s)| match parse_key(k) {
                Some((Stage::LayerOut, Some(l))) => s.all.std.map(|v| (l, v)),
                _ => None,
            })
            .collect()
    };
    let (sa, sb) = (series(a), series(b));
    if sa.is_empty() && sb.is_empty() {
        return "<p>No layer_out stages traced.</p>".into();
    }
    let n = sa.iter().chain(&sb).map(|p| p.0).max().unwrap_or(0) + 1;
    let vals: Vec<f64> = sa.iter().chain(&sb).map(|p| p.1.max(1e-12).log10()).collect();
    let (lo, hi) =
        (vals.iter().cloned().fold(f64::INFINITY, f64::min), vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max));
    let (lo, hi) = if hi - lo < 1e-9 { (lo - 0.5, hi + 0.5) } else { (lo, hi) };
    let (w, h, left, top, bottom) = (640.0, 240.0, 56.0, 12.0, 28.0);
    let x = |l: usize| left + (w - left - 12.0) * l as f64 / ((n.max(2) - 1) as f64);
    let y = |v: f64| top + (h - top - bottom) * (1.0 - (v.max(1e-12).log10() - lo) / (hi - lo));
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-size="10" font-family="monospace">"#
    );
    let _ = write!(
        s,
        r##"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="#9ca3af"/>"##,
        h - bottom,
        w - 12.0,
        h - bottom
    );
    for l in 0..n {
        let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="middle">{l}</text>"#, x(l), h - bottom + 14.0);
    }
    for k in 0..=4 {
        let v = lo + (hi - lo) * k as f64 / 4.0;
        let yy = top + (h - top - bottom) * (1.0 - k as f64 / 4.0);
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            left - 4.0,
            yy + 3.0,
            g(Some(10f64.powf(v)))
        );
    }
    for (pts, colour, dash) in [(&sb, "#2563eb", ""), (&sa, "#dc2626", "5,3")] {
        let path: Vec<String> = pts.iter().map(|(l, v)| format!("{:.1},{:.1}", x(*l), y(*v))).collect();
        let _ = write!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/>"#,
            path.join(" ")
        );
    }
    let _ = write!(
        s,
        r##"<text x="{}" y="20" fill="#2563eb">B (reference)</text><text x="{}" y="34" fill="#dc2626">A</text>"##,
        w - 120.0,
        w - 120.0
    );
    s.push_str("</svg>");
    s
}

fn chain_chart(d: &Diff) -> String {
    if d.chain.is_empty() {
        return "<p>No divergence, so no chain.</p>".into();
    }
    let links = &d.chain[..d.chain.len().min(24)];
    let (bw, left, h) = (360.0, 170.0, 18.0);
    let max = links.iter().map(|c| c.factor.max(1e-6).log10()).fold(0.0f64, f64::max);
    let min = links.iter().map(|c| c.factor.max(1e-6).log10()).fold(0.0f64, f64::min);
    let span = (max - min).max(1.0);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-size="10" font-family="monospace">"#,
        left + bw + 220.0,
        h * links.len() as f64 + 8.0
    );
    for (i, c) in links.iter().enumerate() {
        let y = 4.0 + h * i as f64;
        let len = bw * (c.factor.max(1e-6).log10() - min) / span;
        let _ = write!(
            s,
            r##"<text x="{}" y="{}" text-anchor="end">{}</text><rect x="{left}" y="{y}" width="{:.1}" height="{}" fill="#f59e0b"/><text x="{}" y="{}">{}× (rel err {})</text>"##,
            left - 6.0,
            y + 12.0,
            esc(&c.key),
            len.max(1.0),
            h - 4.0,
            left + len.max(1.0) + 4.0,
            y + 12.0,
            g(Some(c.factor)),
            g(Some(c.rel_l2))
        );
    }
    s.push_str("</svg>");
    s
}

pub fn page(d: &Diff, a: &Trace, b: &Trace) -> String {
    let mut s = String::new();
    let verdict = match d.first {
        Some(i) => format!(
            r#"<div class="bad">DIVERGED at <b>{}</b> — {}</div>"#,
            esc(&d.stages[i].key),
            match d.stages[i].origin {
                crate::compare::Origin::Introduced => "introduced here",
                _ => "inherited",
            }
        ),
        None if d.hard_flips > 0 => {
            format!(r#"<div class="bad">DIVERGED: {} top-1 flips that are not near-ties</div>"#, d.hard_flips)
        }
        None => r#"<div class="good">PARITY: every stage within bounds</div>"#.to_string(),
    };
    let _ = write!(
        s,
        r#"{}<h1>plumb diff</h1><p>A: <b>{}</b> &nbsp; B (reference): <b>{}</b> &nbsp; tokens: {}</p>{verdict}"#,
        head("plumb diff"),
        esc(&d.engine_a),
        esc(&d.engine_b),
        b.tokens.len()
    );
    for n in &d.notes {
        let _ = write!(s, r#"<p class="note">{}</p>"#, esc(n));
    }
    let _ = write!(s, "<h2>Error per stage across layers (NMSE; hover for values)</h2>{}", heatmap(d));
    let _ = write!(s, "<h2>Residual stream std per layer (layer_out)</h2>{}", std_chart(a, b));
    let _ = write!(
        s,
        "<h2>Divergence chain (error relative to the first divergent stage, log scale)</h2>{}",
        chain_chart(d)
    );
    s.push_str("<h2>Stages</h2><table><tr><th>stage</th><th>cosine</th><th>NMSE</th><th>max |Δ|</th><th>rel L2</th><th>std A/B</th><th>growth</th><th>verdict</th></tr>");
    for st in &d.stages {
        let verdict = match (&st.basis, st.over) {
            (Basis::OnlyA, _) => "only in A".into(),
            (Basis::OnlyB, _) => "only in B".into(),
            (_, true) => "OVER".into(),
            (Basis::Tensors, false) => "ok".to_string(),
            _ => "ok (stats)".into(),
        };
        let _ = write!(
            s,
            r#"<tr class="{}"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            if st.over { "over" } else { "" },
            esc(&st.key),
            g(st.cosine),
            g(st.nmse.or(st.stats_rel)),
            g(st.max_abs),
            g(st.rel_l2),
            g(st.std_ratio),
            st.growth.map(|x| format!("{}×", g(Some(x)))).unwrap_or_default(),
            verdict
        );
    }
    s.push_str("</table></body></html>\n");
    s
}

/// Colour for a local error's ratio to its band: green well inside, yellow
/// near 1, red outside (darker the further).
fn ratio_heat(ratio: Option<f64>) -> String {
    let Some(r) = ratio else { return "#e5e7eb".into() };
    let x = r.max(1e-6).log10();
    if r > 1.0 {
        let l = 60.0 - 25.0 * (x / 4.0).clamp(0.0, 1.0);
        return format!("hsl(0, 80%, {l:.0}%)");
    }
    // log10 ratio from -3 (deep green) to 0 (yellow).
    let t = ((x + 3.0) / 3.0).clamp(0.0, 1.0);
    format!("hsl({:.0}, 65%, {:.0}%)", 130.0 - 80.0 * t, 45.0 + 10.0 * t)
}

/// The noise-aware report as a page: verdict, findings, a heatmap of each
/// stage's local error ÷ its band across layers, and the table.
pub fn noise_page(r: &crate::noise::NoiseReport) -> String {
    use crate::noise::Verdict;
    let mut s = String::new();
    let verdict = match (r.verdict, r.anomaly) {
        (Verdict::Anomaly, Some(i)) => format!(
            r#"<div class="bad">ANOMALY at <b>{}</b>: local error {} is {} × its band ({})</div>"#,
            esc(&r.stages[i].key),
            g(r.stages[i].local),
            g(r.stages[i].ratio),
            g(Some(r.stages[i].band))
        ),
        (Verdict::Anomaly, None) => {
            r#"<div class="bad">ANOMALY in what the sides were given; every stage within its band</div>"#.into()
        }
        (Verdict::Parity, _) => r#"<div class="good">PARITY: every stage equal within f32 rounding</div>"#.into(),
        (Verdict::WithinNoise, _) => format!(
            r#"<div class="good">WITHIN NOISE: every stage inside its band (worst {} × at {})</div>"#,
            r.worst.map(|i| g(r.stages[i].ratio)).unwrap_or_default(),
            r.worst.map(|i| esc(&r.stages[i].key)).unwrap_or_default()
        ),
    };
    let _ = write!(
        s,
        r#"{}<h1>{}</h1><p>A: <b>{}</b> &nbsp; B (reference): <b>{}</b></p><p>bands: {}</p>{verdict}"#,
        head(&r.command),
        esc(&r.command),
        esc(&r.engine_a),
        esc(&r.engine_b),
        esc(&r.calibration)
    );
    for n in &r.notes {
        let _ = write!(s, r#"<p class="note">{}</p>"#, esc(n));
    }
    if !r.findings.is_empty() {
        s.push_str("<h2>Given differently (before any activation)</h2><table><tr><th>kind</th><th>subject</th><th>what</th></tr>");
        for f in &r.findings {
            let _ = write!(
                s,
                r#"<tr class="over"><td>{}</td><td>{}</td><td style="text-align:left">{}</td></tr>"#,
                esc(&f.kind),
                esc(&f.subject),
                esc(&f.what)
            );
        }
        s.push_str("</table>");
    }
    // Heatmap: stage kinds × layers, coloured by ratio.
    let mut layers: Vec<usize> = Vec::new();
    let mut kinds: Vec<Stage> = Vec::new();
    let mut cells: BTreeMap<(Stage, usize), &crate::noise::Judged> = BTreeMap::new();
    for j in &r.stages {
        if let Some((st, Some(l))) = parse_key(&j.key) {
            if !layers.contains(&l) {
                layers.push(l);
            }
            if !kinds.contains(&st) {
                kinds.push(st);
            }
            cells.insert((st, l), j);
        }
    }
    layers.sort();
    kinds.sort();
    let (cw, ch, left, top) = (22.0, 16.0, 120.0, 24.0);
    let _ = write!(
        s,
        r#"<h2>Local error ÷ band per stage across layers (green: inside, red: outside; hover for values)</h2><svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-size="10" font-family="monospace">"#,
        left + cw * layers.len() as f64 + 10.0,
        top + ch * kinds.len() as f64 + 10.0
    );
    for (i, l) in layers.iter().enumerate() {
        let _ = write!(s, r#"<text x="{}" y="16" text-anchor="middle">{l}</text>"#, left + cw * i as f64 + cw / 2.0);
    }
    for (k, st) in kinds.iter().enumerate() {
        let y = top + ch * k as f64;
        let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#, left - 6.0, y + ch - 4.0, st.name());
        for (i, l) in layers.iter().enumerate() {
            let x = left + cw * i as f64;
            if let Some(j) = cells.get(&(*st, *l)) {
                let _ = write!(
                    s,
                    r#"<rect x="{x}" y="{y}" width="{}" height="{}" fill="{}" stroke="{}"><title>{}: local {} band {} ratio {}</title></rect>"#,
                    cw - 1.0,
                    ch - 1.0,
                    ratio_heat(j.ratio),
                    if j.outside { "#7f1d1d" } else { "none" },
                    esc(&j.key),
                    g(j.local),
                    g(Some(j.band)),
                    g(j.ratio)
                );
            }
        }
    }
    s.push_str("</svg>");
    if !r.config.is_empty() {
        s.push_str(
            "<h2>Hyperparameters, side by side</h2><table><tr><th>name</th><th>A</th><th>B</th><th>stages</th></tr>",
        );
        for c in &r.config {
            let _ = write!(
                s,
                r#"<tr class="{}"><td>{}</td><td>{}</td><td>{}</td><td style="text-align:left">{}</td></tr>"#,
                if c.a != c.b { "over" } else { "" },
                esc(&c.name),
                esc(&c.a),
                esc(&c.b),
                esc(&c.stages.join(", "))
            );
        }
        s.push_str("</table>");
    }
    s.push_str("<h2>Stages</h2><table><tr><th>stage</th><th>local err</th><th>calibration</th><th>band</th><th>ratio</th><th>vs kind</th><th>end to end</th><th>verdict</th></tr>");
    for j in &r.stages {
        let _ = write!(
            s,
            r#"<tr class="{}"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            if j.outside { "over" } else { "" },
            esc(&j.key),
            g(j.local),
            g(j.calibration),
            g(Some(j.band)),
            g(j.ratio),
            g(j.vs_kind),
            g(j.end_to_end),
            if j.outside { "OUTSIDE" } else { "ok" }
        );
    }
    s.push_str("</table></body></html>\n");
    s
}

/// The page's head and style, shared by both reports.
fn head(title: &str) -> String {
    format!(r#"<!doctype html><html><head><meta charset="utf-8"><title>{}</title>{STYLE}</head><body>"#, esc(title))
}

const STYLE: &str = r#"<style>
body { font-family: system-ui, sans-serif; margin: 24px; color: #111827; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
.bad { background: #fee2e2; border-left: 6px solid #dc2626; padding: 10px; font-size: 16px; }
.good { background: #dcfce7; border-left: 6px solid #16a34a; padding: 10px; font-size: 16px; }
table { border-collapse: collapse; font-family: monospace; font-size: 12px; }
td, th { padding: 2px 8px; border-bottom: 1px solid #e5e7eb; text-align: right; }
td:first-child, th:first-child { text-align: left; } tr.over { background: #fee2e2; }
.note { color: #92400e; }
</style>"#;

/// The page of `plumb kld` from its JSON report: the figures, the mean
/// divergence by position in the chunk, the worst tokens and, where the
/// run attributed it, the divergence of each unit as bars — attention and
/// feed-forward side by side per layer — and the ranked units.
pub fn kld_page(d: &serde_json::Value) -> String {
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let text = |v: &serde_json::Value| esc(v.as_str().unwrap_or(""));
    let title = format!("plumb kld: {} against {}", d["a"].as_str().unwrap_or(""), d["b"].as_str().unwrap_or(""));
    let mut s = head(&title);
    let _ = write!(
        s,
        "<h1>{}</h1><p>{} chunks of {} tokens, {} tokens scored</p><table>",
        esc(&title),
        d["chunks"],
        d["ctx"],
        d["tokens"]
    );
    let rows = [
        ("PPL(A)", format!("{:.4} ± {:.4}", f(d, "ppl"), f(d, "ppl_error"))),
        ("PPL(B)", format!("{:.4} ± {:.4}", f(d, "ppl_base"), f(d, "ppl_base_error"))),
        ("PPL(A)/PPL(B)", format!("{:.5} ± {:.5}", f(d, "ppl_ratio"), f(d, "ppl_ratio_error"))),
        ("KLD mean", format!("{:.6} ± {:.6}", f(d, "kld_mean"), f(d, "kld_mean_error"))),
        ("KLD median", format!("{:.6}", f(d, "kld_median"))),
        ("KLD 99%", format!("{:.6}", f(&d["kld_percentiles"], "99"))),
        ("KLD max", format!("{:.6}", f(&d["kld_percentiles"], "100"))),
        ("Δp RMS", format!("{:.3}%", 100.0 * f(d, "p_diff_rms"))),
        ("same top token", format!("{:.3}% ± {:.3}%", 100.0 * f(d, "same_top"), 100.0 * f(d, "same_top_error"))),
    ];
    for (k, v) in rows {
        let _ = write!(s, "<tr><td>{k}</td><td>{}</td></tr>", esc(&v));
    }
    s.push_str("</table>");

    // Mean KLD by position: one bar per bucket.
    let curve: Vec<&serde_json::Value> = d["kld_by_position"].as_array().into_iter().flatten().collect();
    if !curve.is_empty() {
        let top = curve.iter().map(|p| f(p, "kld_mean")).fold(0.0, f64::max).max(1e-12);
        let (w, h, bw) = (640.0, 120.0, 640.0 / curve.len() as f64);
        let _ = write!(s, r#"<h2>mean KLD by position in the chunk</h2><svg width="{w}" height="{}">"#, h + 16.0);
        for (i, p) in curve.iter().enumerate() {
            let bh = h * f(p, "kld_mean") / top;
            let _ = write!(
                s,
                r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="#2563eb"><title>{}–{}: {:.6}</title></rect>"##,
                i as f64 * bw,
                h - bh,
                (bw - 1.0).max(1.0),
                p["from"],
                p["to"],
                f(p, "kld_mean")
            );
        }
        let _ = write!(
            s,
            r#"<text x="0" y="{}" font-size="11">position {}</text><text x="{}" y="{}" font-size="11" text-anchor="end">{}</text></svg>"#,
            h + 13.0,
            curve[0]["from"],
            w,
            h + 13.0,
            curve[curve.len() - 1]["to"]
        );
    }

    s.push_str(
        "<h2>worst tokens</h2><table><tr><th>KLD</th><th>chunk</th><th>position</th><th>context → next</th></tr>",
    );
    for t in d["worst"].as_array().into_iter().flatten() {
        let _ = write!(
            s,
            "<tr><td>{:.4}</td><td>{}</td><td>{}</td><td>…{} → <b>{}</b></td></tr>",
            f(t, "kld"),
            t["chunk"],
            t["position"],
            text(&t["context"]),
            text(&t["next"])
        );
    }
    s.push_str("</table>");

    if let Some(at) = d.get("attribution") {
        let units: Vec<&serde_json::Value> = at["units"].as_array().into_iter().flatten().collect();
        let top = units.iter().map(|u| f(u, "kld_mean")).fold(0.0, f64::max).max(1e-12);
        let _ = write!(
            s,
            "<h2>where the divergence comes from</h2><p>{}. The units' sum is {:.1}% of the whole divergence {:.6}.</p>",
            text(&at["method"]),
            100.0 * f(at, "sum") / f(at, "whole"),
            f(at, "whole")
        );
        // One row per unit in pass order: a bar as long as its divergence.
        let (w, rh) = (420.0, 12.0);
        let _ = write!(s, r#"<svg width="{}" height="{}">"#, w + 120.0, rh * units.len() as f64 + 4.0);
        for (i, u) in units.iter().enumerate() {
            let name = u["unit"].as_str().unwrap_or("");
            let colour = if name.ends_with(".attn") {
                "#7c3aed"
            } else if name.ends_with(".ffn") {
                "#ea580c"
            } else {
                "#6b7280"
            };
            let y = i as f64 * rh;
            let bw = (w * f(u, "kld_mean") / top).max(0.0);
            let _ = write!(
                s,
                r##"<text x="0" y="{:.1}" font-size="10" font-family="monospace">{}</text><rect x="110" y="{:.1}" width="{bw:.1}" height="{:.1}" fill="{colour}"><title>{}: {:.6} ({:.1}%)</title></rect>"##,
                y + rh - 2.0,
                esc(name),
                y + 1.0,
                rh - 2.0,
                esc(name),
                f(u, "kld_mean"),
                100.0 * f(u, "share")
            );
        }
        s.push_str("</svg>");
        let mut ranked = units.clone();
        ranked.sort_by(|x, y| f(y, "kld_mean").total_cmp(&f(x, "kld_mean")));
        s.push_str(
            "<table><tr><th>rank</th><th>unit</th><th>KLD mean</th><th>±</th><th>share</th><th>same top</th></tr>",
        );
        for (i, u) in ranked.iter().enumerate() {
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{:.6}</td><td>{:.6}</td><td>{:.1}%</td><td>{:.2}%</td></tr>",
                i + 1,
                text(&u["unit"]),
                f(u, "kld_mean"),
                f(u, "kld_mean_error"),
                100.0 * f(u, "share"),
                100.0 * f(u, "same_top")
            );
        }
        s.push_str("</table>");
    }
    s.push_str("</body></html>\n");
    s
}
