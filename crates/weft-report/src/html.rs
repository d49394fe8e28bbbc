//! The report page: one HTML file, the plots embedded as `data:` URLs, no script, no network.

use std::fmt::Write as _;

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::plot::Chart;
use crate::read::RunData;

const STYLE: &str = "
body { font-family: system-ui, 'DejaVu Sans', sans-serif; margin: 2em auto; max-width: 1700px;
       padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; }
.sub { color: #666; margin-top: 0; }
.grid { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; border: 1px solid #ddd; padding: 0.5em; background: #fff;
         box-sizing: border-box; width: calc(50% - 0.5em); max-width: 820px; }
@media (max-width: 1100px) { figure { width: 100%; } }
figure img { display: block; max-width: 100%; height: auto; }
figcaption { font-size: 0.9em; color: #555; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f4f4f4; }
pre { background: #f7f7f7; border: 1px solid #ddd; padding: 0.8em; overflow-x: auto; }
nav { display: flex; flex-wrap: wrap; gap: 0.2em 0.8em; }
";

/// Escape text for HTML.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn number(v: f64) -> String {
    let a = v.abs();
    if v == v.trunc() && a < 1e12 {
        format!("{v:.0}")
    } else if a != 0.0 && !(1e-3..1e6).contains(&a) {
        format!("{v:.4e}")
    } else {
        format!("{v:.5}")
    }
}

fn value(v: &Value) -> String {
    match v {
        Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), number),
        Value::String(s) => escape(s),
        Value::Null => "&ndash;".into(),
        other => escape(&other.to_string()),
    }
}

fn figure(out: &mut String, chart: &Chart, png: &[u8]) {
    let b64 = base64::engine::general_purpose::STANDARD.encode(png);
    let names: Vec<&str> = chart.series.iter().map(|s| s.name.as_str()).collect();
    let _ = writeln!(
        out,
        "<figure id=\"{file}\"><img alt=\"{title}\" src=\"data:image/png;base64,{b64}\">\
         <figcaption>{title} &middot; {names} &middot; <code>{file}.png</code></figcaption></figure>",
        file = escape(&chart.file),
        title = escape(&chart.title),
        names = escape(&names.join(", ")),
    );
}

fn stats_table(out: &mut String, rows: &[(&str, &[(f64, f64)])], extra: Option<String>) {
    out.push_str(
        "<table><thead><tr><th>metric</th><th>points</th><th>first</th><th>last</th>\
         <th>min</th><th>max</th><th>step of min</th><th>step of max</th></tr></thead><tbody>\n",
    );
    for (name, points) in rows {
        let finite: Vec<(f64, f64)> = points.iter().copied().filter(|p| p.1.is_finite()).collect();
        let (Some(first), Some(last)) = (finite.first(), finite.last()) else {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>0</td><td colspan=\"6\">no finite value</td></tr>",
                escape(name)
            );
            continue;
        };
        let min = finite.iter().min_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
        let max = finite.iter().max_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td></tr>",
            escape(name),
            finite.len(),
            number(first.1),
            number(last.1),
            number(min.1),
            number(max.1),
            number(min.0),
            number(max.0)
        );
    }
    if let Some(row) = extra {
        out.push_str(&row);
    }
    out.push_str("</tbody></table>\n");
}

fn records_table(out: &mut String, rows: &[Map<String, Value>], keys: &[&str]) {
    out.push_str("<table><thead><tr>");
    for k in keys {
        let _ = write!(out, "<th>{}</th>", escape(k));
    }
    out.push_str("</tr></thead><tbody>\n");
    for row in rows {
        out.push_str("<tr>");
        for k in keys {
            let _ = write!(out, "<td>{}</td>", row.get(*k).map_or("".into(), value));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table>\n");
}

/// The environment of each start, one column per start (first run, then each resume).
fn starts_table(out: &mut String, starts: &[Map<String, Value>]) {
    let mut keys: Vec<&str> = Vec::new();
    for s in starts {
        for k in s.keys() {
            if !keys.contains(&k.as_str()) {
                keys.push(k);
            }
        }
    }
    out.push_str("<table><thead><tr><th>field</th>");
    for i in 0..starts.len() {
        let _ = write!(
            out,
            "<th>{}</th>",
            if i == 0 {
                "start".to_string()
            } else {
                format!("resume {i}")
            }
        );
    }
    out.push_str("</tr></thead><tbody>\n");
    for k in keys {
        let _ = write!(out, "<tr><td>{}</td>", escape(k));
        for s in starts {
            let _ = write!(out, "<td>{}</td>", s.get(k).map_or("".into(), value));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table>\n");
}

/// The page: header, training plots and table, evaluation plots and table, environment,
/// config, notes. `figures` are the charts with their PNG bytes, in order.
pub fn page(data: &RunData, figures: &[(&Chart, Vec<u8>)]) -> String {
    let mut out = String::new();
    let name = data.dir.file_name().map_or_else(
        || data.dir.display().to_string(),
        |n| n.to_string_lossy().into(),
    );
    let (first, last) = data.step_range();
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>weft report: {}</title><style>{STYLE}</style></head><body>\n",
        escape(&name)
    );
    let _ = writeln!(out, "<h1>weft run report: {}</h1>", escape(&name));
    let samples = data
        .train
        .get("samples_seen")
        .and_then(|p| p.last())
        .map_or("?".into(), |p| number(p.1));
    let _ = writeln!(
        out,
        "<p class=\"sub\">{} &middot; steps {first}&ndash;{last} &middot; {samples} samples \
         seen &middot; {} skipped updates &middot; {} evaluations &middot; made by weft {}</p>",
        escape(&data.dir.display().to_string()),
        data.skipped_steps.len(),
        data.eval_rows.len(),
        env!("CARGO_PKG_VERSION")
    );
    out.push_str("<nav>");
    for (chart, _) in figures {
        let _ = write!(
            out,
            "<a href=\"#{}\">{}</a>",
            escape(&chart.file),
            escape(&chart.file)
        );
    }
    out.push_str("<a href=\"#environment\">environment</a><a href=\"#config\">config</a></nav>\n");

    out.push_str("<h2 id=\"training\">Training</h2>\n<div class=\"grid\">\n");
    for (chart, png) in figures.iter().filter(|(c, _)| c.file.starts_with("train_")) {
        figure(&mut out, chart, png);
    }
    out.push_str("</div>\n<h3>Every field of metrics.jsonl</h3>\n");
    let train: Vec<(&str, &[(f64, f64)])> = data
        .train_keys()
        .map(|k| (k, data.train[k].as_slice()))
        .collect();
    let shown: Vec<String> = data
        .skipped_steps
        .iter()
        .take(50)
        .map(u64::to_string)
        .collect();
    let skipped =
        format!(
        "<tr><td>skipped</td><td colspan=\"7\">{} updates skipped (non-finite loss or gradient \
         norm){}{}{}</td></tr>\n",
        data.skipped_steps.len(),
        if shown.is_empty() { "" } else { ", at steps " },
        shown.join(", "),
        if data.skipped_steps.len() > 50 { ", ..." } else { "" }
    );
    stats_table(&mut out, &train, Some(skipped));

    out.push_str("<h2 id=\"evaluation\">Evaluation</h2>\n");
    if data.eval_rows.is_empty() {
        out.push_str(
            "<p>No evaluation during training (eval.jsonl is empty: no <code>data.val</code>, \
             or a model without the ITC head). <code>weft eval</code> evaluates saved weights.</p>\n",
        );
    } else {
        out.push_str("<div class=\"grid\">\n");
        for (chart, png) in figures.iter().filter(|(c, _)| c.file.starts_with("eval_")) {
            figure(&mut out, chart, png);
        }
        out.push_str("</div>\n<h3>Every evaluation (eval.jsonl)</h3>\n");
        let mut keys = vec!["step", "samples_seen"];
        keys.extend(data.eval_keys());
        records_table(&mut out, &data.eval_rows, &keys);
    }

    out.push_str("<h2 id=\"environment\">Environment</h2>\n");
    if data.starts.is_empty() {
        out.push_str("<p>Not recorded (no runs.jsonl).</p>\n");
    } else {
        starts_table(&mut out, &data.starts);
    }
    out.push_str("<h2 id=\"config\">Resolved config (config.toml)</h2>\n");
    match &data.config {
        Some(text) => {
            let _ = writeln!(out, "<pre>{}</pre>", escape(text));
        }
        None => out.push_str("<p>No config.toml in the run directory.</p>\n"),
    }
    if !data.notes.is_empty() {
        out.push_str("<h2>Notes</h2>\n<ul>\n");
        for n in &data.notes {
            let _ = writeln!(out, "<li>{}</li>", escape(n));
        }
        out.push_str("</ul>\n");
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn numbers_are_readable() {
        assert_eq!(number(936.0), "936");
        assert_eq!(number(0.5), "0.50000");
        assert_eq!(number(4e-5), "4.0000e-5");
    }
}
