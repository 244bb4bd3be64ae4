//! Bar charts drawn on the server as SVG: no script, no external library. Each chart
//! has a title and description for screen readers, and pages show its figures in a
//! table beside it.

use maud::{Markup, html};

/// One bar: its label, value and the CSS modifier that colours it.
#[derive(Debug, Clone)]
pub struct Bar {
    pub label: String,
    pub value: u64,
    /// `accepted`, `rejected` or `""` for the default colour.
    pub kind: &'static str,
    /// Shown in place of the value (a suppressed count's `<5`).
    pub shown: Option<&'static str>,
}

const WIDTH: u64 = 640;
const LABEL: u64 = 260;
const ROW: u64 = 30;
const BAR: u64 = 20;
const ROOM: u64 = WIDTH - LABEL - 70;

/// A horizontal bar chart; `id` names its title for `aria-labelledby`.
pub fn bars(id: &str, title: &str, bars: &[Bar]) -> Markup {
    let max = bars.iter().map(|b| b.value).max().unwrap_or(0).max(1);
    let height = ROW * (bars.len() as u64).max(1) + 10;
    let description = bars
        .iter()
        .map(|b| format!("{}: {}", b.label, shown(b)))
        .collect::<Vec<_>>()
        .join("; ");
    html! {
        svg class="console-chart" xmlns="http://www.w3.org/2000/svg" role="img"
            width=(WIDTH) height=(height) viewBox={ "0 0 " (WIDTH) " " (height) }
            aria-labelledby={ (id) "-title " (id) "-desc" } {
            title id={ (id) "-title" } { (title) }
            desc id={ (id) "-desc" } {
                @if bars.is_empty() { "Nothing to show." } @else { (description) }
            }
            @if bars.is_empty() {
                text class="console-chart__label" x="0" y="20" { "None in this period" }
            }
            @for (i, b) in bars.iter().enumerate() {
                @let y = i as u64 * ROW + 5;
                @let w = if b.value == 0 { 0 } else { (b.value * ROOM / max).max(2) };
                text class="console-chart__label" x="0" y=(y + 15) { (b.label) }
                rect class={ "console-chart__bar" @if !b.kind.is_empty() { " console-chart__bar--" (b.kind) } }
                    x=(LABEL) y=(y) width=(w) height=(BAR) {}
                text class="console-chart__label" x=(LABEL + w + 6) y=(y + 15) { (shown(b)) }
            }
            line class="console-chart__axis" x1=(LABEL) y1="0" x2=(LABEL) y2=(height) {}
        }
    }
}

fn shown(b: &Bar) -> String {
    b.shown.map_or_else(|| b.value.to_string(), str::to_owned)
}
