//! Inline SVG charts for the HTML report: horizontal bars and a stacked histogram.
//!
//! Charts are SVG written as text, so the report needs no script, no font and no network to draw
//! them, prints as vectors, and its DOM can be checked (each bar is a `rect` with `class="bar"` and
//! a `data-label`). Every label and title goes through [`escape`].

use std::fmt::Write;

/// Colours of the series (languages, categories), in order; repeats past the end.
pub(super) const PALETTE: [&str; 8] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f",
];

/// Escapes text for HTML and SVG content and attribute values.
pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// One bar: its label, its value and an optional marker (the expected value) on the same scale.
pub(super) struct Bar {
    pub(super) label: String,
    pub(super) value: f64,
    /// Shown after the bar, e.g. "412 (20.6%)".
    pub(super) caption: String,
    pub(super) marker: Option<f64>,
}

/// A horizontal bar chart: one row per bar, labels on the left. `class` names the chart for
/// styling and tests; `marker_title` describes the markers when there are any.
pub(super) fn bars(class: &str, title: &str, bars: &[Bar], marker_title: Option<&str>) -> String {
    const LABEL: f64 = 220.0;
    const WIDTH: f64 = 440.0;
    const ROW: f64 = 20.0;
    let max = bars
        .iter()
        .flat_map(|b| [b.value, b.marker.unwrap_or(0.0)])
        .fold(0.0_f64, f64::max)
        .max(f64::MIN_POSITIVE);
    let height = ROW * bars.len() as f64 + 24.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart {class}" role="img" viewBox="0 0 {total} {height}" width="{total}" height="{height}"><title>{title}</title>"#,
        class = escape(class),
        total = LABEL + WIDTH + 280.0,
        title = escape(title),
    );
    for (i, bar) in bars.iter().enumerate() {
        let y = ROW * i as f64;
        let width = (bar.value / max * WIDTH).max(0.5);
        // The caption starts past both the bar and its marker, so neither covers it.
        let caption_x = LABEL + width.max(bar.marker.map_or(0.0, |m| m / max * WIDTH)) + 6.0;
        let _ = write!(
            svg,
            r#"<text x="{lx}" y="{ty}" text-anchor="end" class="label">{label}</text><rect class="bar" data-label="{label}" data-value="{value}" x="{LABEL}" y="{ry}" width="{width:.1}" height="{h}" fill="{fill}"><title>{label}: {caption}</title></rect><text x="{cx:.1}" y="{ty}" class="caption">{caption}</text>"#,
            lx = LABEL - 6.0,
            ty = y + 14.0,
            label = escape(&bar.label),
            value = bar.value,
            ry = y + 3.0,
            h = ROW - 6.0,
            fill = PALETTE[0],
            cx = caption_x,
            caption = escape(&bar.caption),
        );
        if let Some(marker) = bar.marker {
            let x = LABEL + marker / max * WIDTH;
            let _ = write!(
                svg,
                r##"<line class="marker" x1="{x:.1}" x2="{x:.1}" y1="{y1}" y2="{y2}" stroke="#222" stroke-width="2"><title>{t}</title></line>"##,
                y1 = y + 1.0,
                y2 = y + ROW - 1.0,
                t = escape(marker_title.unwrap_or("expected")),
            );
        }
    }
    if let Some(marker_title) = marker_title {
        let _ = write!(
            svg,
            r#"<text x="{LABEL}" y="{y}" class="legend">| {t}</text>"#,
            y = height - 6.0,
            t = escape(marker_title),
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A histogram whose bins stack one segment per series. `bins` are (label, counts per series).
pub(super) fn stacked_histogram(
    class: &str,
    title: &str,
    series: &[String],
    bins: &[(String, Vec<u64>)],
) -> String {
    const HEIGHT: f64 = 160.0;
    const PLOT_WIDTH: f64 = 600.0;
    let max = bins
        .iter()
        .map(|(_, counts)| counts.iter().sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let width = PLOT_WIDTH / bins.len().max(1) as f64;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart {class}" role="img" viewBox="0 0 {w} {h}" width="{w}" height="{h}"><title>{title}</title>"#,
        class = escape(class),
        w = PLOT_WIDTH + 130.0,
        h = HEIGHT + 40.0,
        title = escape(title),
    );
    for (i, (label, counts)) in bins.iter().enumerate() {
        let x = width * i as f64;
        let mut y = HEIGHT;
        for (s, count) in counts.iter().enumerate() {
            if *count == 0 {
                continue;
            }
            let h = *count as f64 / max * HEIGHT;
            y -= h;
            let _ = write!(
                svg,
                r#"<rect class="bar" data-label="{label}" data-series="{series}" data-value="{count}" x="{x:.1}" y="{y:.1}" width="{bw:.1}" height="{h:.1}" fill="{fill}"><title>{series}, {label} words: {count}</title></rect>"#,
                label = escape(label),
                series = escape(&series[s]),
                bw = (width - 1.0).max(0.5),
                fill = PALETTE[s % PALETTE.len()],
            );
        }
        if i % 4 == 0 {
            let _ = write!(
                svg,
                r#"<text x="{x:.1}" y="{ty}" class="axis">{label}</text>"#,
                ty = HEIGHT + 14.0,
                label = escape(label),
            );
        }
    }
    for (s, name) in series.iter().enumerate() {
        let y = 12.0 + 16.0 * s as f64;
        let _ = write!(
            svg,
            r#"<rect x="{x}" y="{ry}" width="10" height="10" fill="{fill}"/><text x="{tx}" y="{y}" class="legend">{name}</text>"#,
            x = PLOT_WIDTH + 16.0,
            ry = y - 9.0,
            fill = PALETTE[s % PALETTE.len()],
            tx = PLOT_WIDTH + 30.0,
            name = escape(name),
        );
    }
    let _ = write!(
        svg,
        r#"<text x="0" y="{y}" class="axis">words</text></svg>"#,
        y = HEIGHT + 32.0
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_bars_scale_to_the_largest() {
        let svg = bars(
            "balance",
            "a <b>",
            &[
                Bar {
                    label: "R&D".into(),
                    value: 2.0,
                    caption: "2".into(),
                    marker: Some(4.0),
                },
                Bar {
                    label: "\"x\"".into(),
                    value: 4.0,
                    caption: "4".into(),
                    marker: None,
                },
            ],
            Some("configured weight"),
        );
        assert!(svg.contains("R&amp;D") && svg.contains("&quot;x&quot;"));
        assert!(svg.contains("a &lt;b&gt;"));
        assert_eq!(svg.matches(r#"class="bar""#).count(), 2);
        assert!(
            svg.contains(r#"width="440.0""#),
            "the largest bar spans the plot"
        );
        assert!(svg.contains(r#"width="220.0""#));
    }
}
