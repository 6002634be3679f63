//! The report as one self-contained HTML file.
//!
//! Everything is inline: the style sheet, the SVG charts, and one small script that unfolds long
//! texts before printing. No font, image or script is fetched, so the file opens from a `file://`
//! URL offline and makes no request. Every section is a `<section id="...">` (overview, balance,
//! languages, lengths, tags, duplicates, quality, cost, examples) so it can be linked and tested;
//! every text from the dataset is escaped.

use std::fmt::Write;

use super::svg::{Bar, PALETTE, bars, escape, stacked_histogram};
use super::{CostLine, DatasetReport, Example};

const STYLE: &str = r#"
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 0 auto; max-width: 980px; padding: 16px 24px; }
h1 { font-size: 22px; margin: 8px 0 4px; } h2 { font-size: 18px; border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 32px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
nav a { margin-right: 10px; } .muted { color: #666; }
table { border-collapse: collapse; margin: 6px 0 12px; } th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
svg.chart { display: block; max-width: 100%; height: auto; margin: 6px 0 14px; }
svg text { font: 11px system-ui, sans-serif; fill: #333; } svg text.legend { fill: #555; }
.warn { background: #fff4e5; border-left: 4px solid #f0a020; padding: 6px 10px; }
.example { border: 1px solid #ddd; border-radius: 4px; padding: 6px 10px; margin: 10px 0; }
.field { margin: 4px 0; } .field .name { font-weight: 600; } .field .made { color: #666; font-size: 12px; }
.field pre { white-space: pre-wrap; margin: 2px 0 2px 12px; font: 13px/1.4 system-ui, sans-serif; }
code { font-size: 12px; }
@media print { nav { display: none; } section { break-inside: avoid-page; } svg.chart, table, .example { break-inside: avoid; } body { max-width: none; } }
"#;

/// Unfolds every folded text before printing, so the printout shows what the screen can.
const SCRIPT: &str = r#"window.addEventListener("beforeprint", function () { document.querySelectorAll("details").forEach(function (d) { d.open = true; }); });"#;

const SECTIONS: [(&str, &str); 9] = [
    ("overview", "Overview"),
    ("balance", "Class balance"),
    ("languages", "Languages"),
    ("lengths", "Lengths"),
    ("tags", "Tags"),
    ("duplicates", "Duplicates"),
    ("quality", "Quality"),
    ("cost", "Cost"),
    ("examples", "Examples"),
];

/// The HTML report.
pub(crate) fn render(report: &DatasetReport) -> String {
    let mut html = String::with_capacity(64 * 1024);
    let _ = write!(
        html,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>{name}: dataset report</title><style>{STYLE}</style><script>{SCRIPT}</script></head><body><h1>{name}</h1><p class="muted">Dataset report from <code>{file}</code>, made by ticketbuild.</p><nav>"#,
        name = escape(&report.dataset),
        file = escape(&report.file),
    );
    for (id, title) in SECTIONS {
        let _ = write!(html, r##"<a href="#{id}">{title}</a>"##);
    }
    html.push_str("</nav>");
    overview(&mut html, report);
    balance(&mut html, report);
    languages(&mut html, report);
    lengths(&mut html, report);
    tags(&mut html, report);
    duplicates(&mut html, report);
    quality(&mut html, report);
    cost(&mut html, report);
    examples(&mut html, report);
    html.push_str("</body></html>\n");
    html
}

fn open_section(html: &mut String, id: &str) {
    let title = SECTIONS
        .iter()
        .find(|(i, _)| *i == id)
        .map_or(id, |(_, t)| t);
    let _ = write!(html, r#"<section id="{id}"><h2>{title}</h2>"#);
}

fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

/// An amount in every currency of the report, as the CLI shows it.
fn money(report: &DatasetReport, usd: f64) -> String {
    let parts: Vec<String> = report
        .cost
        .currencies
        .iter()
        .map(|(code, rate)| match code.as_str() {
            "USD" => format!("${usd:.4}"),
            _ => format!("{code} {:.4}", usd * rate),
        })
        .collect();
    if parts.is_empty() {
        format!("${usd:.4}")
    } else {
        parts.join(" / ")
    }
}

fn overview(html: &mut String, report: &DatasetReport) {
    let o = &report.overview;
    open_section(html, "overview");
    if o.missing > 0 {
        let _ = write!(
            html,
            r#"<p class="warn">{} of {} tickets are missing from the file ({} failed in the last build; its failures file lists them). The figures below describe the rows that were written.</p>"#,
            o.missing, o.expected_rows, o.failed
        );
    }
    let languages: Vec<String> = o
        .languages
        .iter()
        .map(|(l, n)| format!("{} {n}", escape(l)))
        .collect();
    let columns: Vec<String> = o
        .columns
        .iter()
        .map(|c| {
            format!(
                "{} <span class=\"muted\">({})</span>",
                escape(&c.name),
                c.kind
            )
        })
        .collect();
    let reuse = if o.reused + o.generated > 0 {
        format!(
            "{} artifacts reused from the cache, {} generated ({} reused)",
            o.reused,
            o.generated,
            percent(o.reused as f64 / (o.reused + o.generated) as f64)
        )
    } else {
        "no build recorded".to_string()
    };
    let _ = write!(
        html,
        r#"<table class="overview"><tr><th>rows</th><td class="n" data-figure="rows">{rows}</td></tr><tr><th>asked for</th><td class="n">{expected}</td></tr><tr><th>columns</th><td>{columns}</td></tr><tr><th>languages</th><td>{languages}</td></tr><tr><th>written</th><td>{written}</td></tr><tr><th>seed</th><td>{seed}</td></tr><tr><th>profile</th><td>{profile}</td></tr><tr><th>cost</th><td>{cost}</td></tr><tr><th>cache reuse</th><td>{reuse}</td></tr></table>"#,
        rows = o.rows,
        expected = o.expected_rows,
        columns = columns.join(", "),
        languages = languages.join(", "),
        written = escape(o.written_at.as_deref().unwrap_or("unknown")),
        seed = o.seed,
        profile = escape(o.profile.as_deref().unwrap_or("(none)")),
        cost = escape(&o.cost),
    );
    html.push_str("<h3>Nodes and models</h3><table><tr><th>node</th><th>output</th><th>provider</th><th>model</th><th>prompt</th><th>template hash</th></tr>");
    for node in &o.nodes {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td></tr>",
            escape(&node.node),
            node.output,
            escape(&node.provider),
            escape(&node.model),
            escape(&node.prompt),
            escape(node.template_hash.get(..16).unwrap_or(&node.template_hash)),
        );
    }
    html.push_str("</table></section>");
}

fn balance(html: &mut String, report: &DatasetReport) {
    open_section(html, "balance");
    if report.balance.is_empty() {
        html.push_str("<p>The dataset has no table column.</p>");
    }
    let languages: Vec<&String> = report.overview.languages.keys().collect();
    for table in &report.balance {
        let _ = write!(
            html,
            r#"<h3>{}</h3><p class="muted">Share of rows per category; the black mark is the share its configured weight asks for.</p>"#,
            escape(&table.column)
        );
        let chart: Vec<Bar> = table
            .values
            .iter()
            .map(|v| Bar {
                label: v.value.clone(),
                value: v.share,
                caption: format!("{} ({})", v.count, percent(v.share)),
                marker: Some(v.expected_share),
            })
            .collect();
        let class = format!("balance balance-{}", table.column.replace(' ', "-"));
        html.push_str(&bars(
            &class,
            &format!("{}: actual against configured", table.column),
            &chart,
            Some("configured weight"),
        ));
        let _ = write!(
            html,
            r#"<details><summary>{} per language</summary><table><tr><th>{}</th><th class="n">weight</th>"#,
            escape(&table.column),
            escape(&table.column)
        );
        for language in &languages {
            let _ = write!(html, r#"<th class="n">{}</th>"#, escape(language));
        }
        html.push_str("</tr>");
        for value in &table.values {
            let _ = write!(
                html,
                r#"<tr><td>{}</td><td class="n">{}</td>"#,
                escape(&value.value),
                value.weight
            );
            for language in &languages {
                let n = value.by_language.get(*language).copied().unwrap_or(0);
                let _ = write!(html, r#"<td class="n">{n}</td>"#);
            }
            html.push_str("</tr>");
        }
        html.push_str("</table></details>");
    }
    html.push_str("</section>");
}

fn languages(html: &mut String, report: &DatasetReport) {
    open_section(html, "languages");
    html.push_str(r#"<p class="muted">Share of texts (20 characters or longer) detected in the ticket's language, per text column: whichlang, then lingua where whichlang disagrees, as the quality gate judges.</p>"#);
    let chart: Vec<Bar> = report
        .languages
        .iter()
        .map(|a| Bar {
            label: a.column.clone(),
            value: a.agreement,
            caption: format!(
                "{} of {} agree ({}), {} too short or mixed",
                a.agree,
                a.judged,
                percent(a.agreement),
                a.unsure
            ),
            marker: None,
        })
        .collect();
    if chart.is_empty() {
        html.push_str("<p>The dataset has no text column.</p>");
    } else {
        html.push_str(&bars("agreement", "language agreement", &chart, None));
    }
    html.push_str(r#"<table><tr><th>column</th>"#);
    let languages: Vec<&String> = report.overview.languages.keys().collect();
    for language in &languages {
        let _ = write!(html, r#"<th class="n">{}</th>"#, escape(language));
    }
    html.push_str("</tr>");
    for agreement in &report.languages {
        let _ = write!(html, "<tr><td>{}</td>", escape(&agreement.column));
        for language in &languages {
            let cell = agreement
                .by_language
                .get(*language)
                .map_or_else(|| "-".to_string(), |c| format!("{}/{}", c.agree, c.judged));
            let _ = write!(html, r#"<td class="n">{cell}</td>"#);
        }
        html.push_str("</tr>");
    }
    html.push_str("</table>");
    let gate: Vec<_> = report
        .quality
        .iter()
        .filter(|q| q.language_checked + q.language_unsure > 0)
        .collect();
    if !gate.is_empty() {
        html.push_str("<h3>The quality gate's language checks (last build)</h3><table><tr><th>node</th><th class=\"n\">checked and right</th><th class=\"n\">too short to tell</th><th class=\"n\">draws rejected for their language</th></tr>");
        for q in gate {
            let _ = write!(
                html,
                r#"<tr><td>{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
                escape(&q.node),
                q.language_checked,
                q.language_unsure,
                q.rejections.get("language").copied().unwrap_or(0)
            );
        }
        html.push_str("</table>");
    }
    html.push_str("</section>");
}

fn lengths(html: &mut String, report: &DatasetReport) {
    open_section(html, "lengths");
    for column in &report.lengths {
        let series: Vec<String> = column
            .by_language
            .iter()
            .map(|s| s.language.clone())
            .collect();
        let bins: Vec<(String, Vec<u64>)> = column
            .histogram
            .iter()
            .map(|bin| {
                let label = format!("{}-{}", bin.from, bin.to - 1);
                let counts = series
                    .iter()
                    .map(|s| bin.counts.get(s).copied().unwrap_or(0))
                    .collect();
                (label, counts)
            })
            .collect();
        let _ = write!(html, "<h3>{} (words)</h3>", escape(&column.column));
        html.push_str(&stacked_histogram(
            &format!("lengths lengths-{}", column.column.replace(' ', "-")),
            &format!("{}: words per text", column.column),
            &series,
            &bins,
        ));
        html.push_str(r#"<table><tr><th>language</th><th class="n">texts</th><th class="n">mean</th><th class="n">min</th><th class="n">p10</th><th class="n">median</th><th class="n">p90</th><th class="n">max</th></tr>"#);
        for (i, s) in column.by_language.iter().enumerate() {
            let _ = write!(
                html,
                r#"<tr><td><span style="color:{c}">&#9632;</span> {l}</td><td class="n">{}</td><td class="n">{:.1}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
                s.count,
                s.mean,
                s.min,
                s.p10,
                s.median,
                s.p90,
                s.max,
                c = PALETTE[i % PALETTE.len()],
                l = escape(&s.language),
            );
        }
        html.push_str("</table>");
    }
    if report.lengths.is_empty() {
        html.push_str("<p>The dataset has no text column.</p>");
    }
    html.push_str("</section>");
}

fn tags(html: &mut String, report: &DatasetReport) {
    open_section(html, "tags");
    if report.tags.is_empty() {
        html.push_str("<p>The dataset has no list column.</p>");
    }
    for list in &report.tags {
        let _ = write!(
            html,
            r#"<h3>{}</h3><p class="muted">{} items in {} rows, {} distinct; the {} most frequent:</p>"#,
            escape(&list.column),
            list.items,
            list.rows,
            list.distinct,
            list.top.len()
        );
        let chart: Vec<Bar> = list
            .top
            .iter()
            .map(|t| Bar {
                label: t.tag.clone(),
                value: t.count as f64,
                caption: t.count.to_string(),
                marker: None,
            })
            .collect();
        html.push_str(&bars(
            &format!("tags tags-{}", list.column.replace(' ', "-")),
            &format!("{}: most frequent", list.column),
            &chart,
            None,
        ));
        let Some(by) = &list.spread_by else { continue };
        let _ = write!(
            html,
            r#"<details><summary>spread per {by}</summary><table class="spread"><tr><th>{col}</th>"#,
            by = escape(by),
            col = escape(&list.column)
        );
        for value in &list.spread_values {
            let _ = write!(html, r#"<th class="n">{}</th>"#, escape(value));
        }
        html.push_str("</tr>");
        for tag in &list.top {
            let _ = write!(html, "<tr><td>{}</td>", escape(&tag.tag));
            let most = tag.spread.iter().copied().max().unwrap_or(0).max(1);
            for n in &tag.spread {
                let alpha = *n as f64 / most as f64 * 0.6;
                let _ = write!(
                    html,
                    r#"<td class="n" style="background:rgba(78,121,167,{alpha:.2})">{n}</td>"#
                );
            }
            html.push_str("</tr>");
        }
        html.push_str("</table></details>");
    }
    html.push_str("</section>");
}

fn duplicates(html: &mut String, report: &DatasetReport) {
    let d = &report.duplicates;
    open_section(html, "duplicates");
    let _ = write!(
        html,
        r#"<p>Compared: {cols} (normalised: case, digits and punctuation ignored). <span data-figure="exact">{exact}</span> rows repeat an earlier row exactly; <span data-figure="near">{near}</span> more are near duplicates (estimated word-shingle similarity of {sim} or more).</p>"#,
        cols = escape(&d.columns.join(", ")),
        exact = d.exact,
        near = d.near,
        sim = d.similarity,
    );
    let unique = report.overview.rows.saturating_sub(d.exact + d.near);
    let counts = [
        ("unique", unique),
        ("exact duplicates", d.exact),
        ("near duplicates", d.near),
    ];
    let chart: Vec<Bar> = counts
        .iter()
        .map(|(label, n)| Bar {
            label: (*label).to_string(),
            value: *n as f64,
            caption: n.to_string(),
            marker: None,
        })
        .collect();
    html.push_str(&bars("duplicates", "rows by duplicate kind", &chart, None));
    if let Some(build) = &d.build {
        let _ = write!(
            html,
            r#"<p>Before writing, the build's quality gate redrew {} exact and {} near duplicates ({} redraws), dropped {} exact duplicates it could not resolve, and left {} near duplicates.</p>"#,
            build.exact_resolved,
            build.near_resolved,
            build.redraws,
            build.exact_dropped,
            build.near_remaining
        );
    }
    if !d.clusters.is_empty() {
        html.push_str(r#"<table class="clusters"><tr><th class="n">rows</th><th>kind</th><th class="n">least similarity</th><th>ticket ids (first row first)</th></tr>"#);
        for cluster in &d.clusters {
            let _ = write!(
                html,
                r#"<tr><td class="n">{}</td><td>{}</td><td class="n">{:.2}</td><td><code>{}</code></td></tr>"#,
                cluster.size,
                if cluster.exact { "exact" } else { "near" },
                cluster.similarity,
                escape(&cluster.ticket_ids.join(" "))
            );
        }
        html.push_str("</table>");
    }
    html.push_str("</section>");
}

fn quality(html: &mut String, report: &DatasetReport) {
    open_section(html, "quality");
    let checked: Vec<_> = report.quality.iter().filter(|q| q.checked).collect();
    if checked.is_empty() {
        html.push_str("<p>No node has checks (<code>[nodes.NAME.checks]</code>): every valid answer was used as it came.</p></section>");
        return;
    }
    let chart: Vec<Bar> = checked
        .iter()
        .map(|q| Bar {
            label: q.node.clone(),
            value: q.rejected as f64,
            caption: format!(
                "{} rejected, {}",
                q.rejected,
                money(report, q.rejected_cost_usd)
            ),
            marker: None,
        })
        .collect();
    html.push_str(&bars("rejected", "draws rejected per node", &chart, None));
    html.push_str(r#"<table><tr><th>node</th><th class="n">rejected</th><th>why</th></tr>"#);
    for q in checked {
        let why: Vec<String> = q
            .rejections
            .iter()
            .map(|(kind, n)| format!("{} {n}", escape(kind)))
            .collect();
        let _ = write!(
            html,
            r#"<tr><td>{}</td><td class="n">{}</td><td>{}</td></tr>"#,
            escape(&q.node),
            q.rejected,
            if why.is_empty() {
                "-".to_string()
            } else {
                why.join(", ")
            }
        );
    }
    html.push_str("</table></section>");
}

fn cost_table(html: &mut String, report: &DatasetReport, title: &str, lines: &[CostLine]) {
    if lines.is_empty() {
        return;
    }
    let _ = write!(
        html,
        r#"<h3>{title}</h3><table><tr><th></th><th class="n">spent in the last build</th><th class="n">reused (paid before)</th></tr>"#
    );
    for line in lines {
        let _ = write!(
            html,
            r#"<tr><td>{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
            escape(&line.name),
            escape(&money(report, line.spent_usd)),
            escape(&money(report, line.reused_usd))
        );
    }
    html.push_str("</table>");
}

fn cost(html: &mut String, report: &DatasetReport) {
    let c = &report.cost;
    open_section(html, "cost");
    let _ = write!(
        html,
        "<p>The artifacts of this dataset cost {} ({} spent in the last build, {} reused from earlier builds); generating it all again would cost {} at today's prices.{}</p>",
        escape(&money(report, c.spent_usd + c.reused_usd)),
        escape(&money(report, c.spent_usd)),
        escape(&money(report, c.reused_usd)),
        escape(&money(report, c.regenerate_usd)),
        if c.unknown > 0 {
            format!(
                " {} artifacts have no known price and are not counted.",
                c.unknown
            )
        } else {
            String::new()
        }
    );
    let chart: Vec<Bar> = c
        .nodes
        .iter()
        .map(|line| Bar {
            label: line.name.clone(),
            value: line.spent_usd + line.reused_usd,
            caption: money(report, line.spent_usd + line.reused_usd),
            marker: None,
        })
        .collect();
    if !chart.is_empty() {
        html.push_str(&bars("cost", "cost per node", &chart, None));
    }
    cost_table(html, report, "Per node", &c.nodes);
    cost_table(html, report, "Per model", &c.models);
    cost_table(html, report, "Per language", &c.languages);
    html.push_str("</section>");
}

fn example(html: &mut String, example: &Example) {
    let _ = write!(
        html,
        r#"<div class="example" data-ticket="{id}"><div class="muted">ticket {id}, {lang}</div>"#,
        id = escape(&example.ticket_id),
        lang = escape(&example.language)
    );
    for field in &example.fields {
        let made = match (&field.node, &field.model, &field.key) {
            (Some(node), model, key) => format!(
                "node {}, model {}, key <code>{}</code>",
                escape(node),
                escape(model.as_deref().unwrap_or("?")),
                escape(key.as_deref().unwrap_or("?"))
            ),
            _ => String::new(),
        };
        let cut = if field.cut { " [...]" } else { "" };
        let value = escape(&field.value);
        if field.value.chars().count() > 160 || field.value.contains('\n') {
            let preview: String = field.value.chars().take(120).collect();
            let _ = write!(
                html,
                r#"<div class="field"><details><summary><span class="name">{name}</span> {preview}... <span class="made">{made}</span></summary><pre>{value}{cut}</pre></details></div>"#,
                name = escape(&field.column),
                preview = escape(&preview.replace('\n', " ")),
            );
        } else {
            let _ = write!(
                html,
                r#"<div class="field"><span class="name">{name}</span>: {value}{cut} <span class="made">{made}</span></div>"#,
                name = escape(&field.column),
            );
        }
    }
    html.push_str("</div>");
}

fn examples(html: &mut String, report: &DatasetReport) {
    open_section(html, "examples");
    html.push_str(r#"<p class="muted">The first tickets of each language, each field with the node, model and artifact key that made it (<code>ticketbuild explain TICKET_ID FIELD</code> tells more).</p>"#);
    let mut language = "";
    for e in &report.examples {
        if e.language != language {
            language = &e.language;
            let _ = write!(html, "<h3>{}</h3>", escape(language));
        }
        example(html, e);
    }
    html.push_str("</section>");
}
