//! Server-side HTML and SVG. Every page carries its numbers in the HTML (usable without
//! JavaScript); `dashboard.js` then keeps them live from the event stream. Every string
//! that came from outside (project, unit and worker names, failure reasons) goes through
//! [`esc`].

use std::fmt::Write;

use super::snapshot::{ProjectPage, ProjectSummary, Published};
use crate::scheduler::Outcome;

/// Accounts and teams listed on the volunteers page (the export has them all).
const LEADERBOARD_SHOWN: usize = 100;

/// Escapes text for HTML and SVG (content and attribute values).
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
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

/// `1234567` as `1,234,567`.
pub(crate) fn int(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Seconds as `1 h 02 min`, `3 min 05 s`, `12 s`.
pub(crate) fn duration(s: u64) -> String {
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, s % 3600 / 60),
    }
}

/// Time to finish, or once finished how it ended: done, partly failed or failed (a
/// finished project is not "done" when its units or its reducer failed).
fn eta(p: &ProjectSummary) -> String {
    match (p.finished, p.eta_seconds) {
        (false, _) if p.outcome == Outcome::Paused => "paused".into(),
        (true, _) => outcome_label(p.outcome).into(),
        (false, Some(s)) => duration(s),
        // No recent rate, or no worker computing: nobody can say.
        (false, None) => "unknown".into(),
    }
}

/// What a finished project shows where a running one shows its ETA (`dashboard.js` says
/// the same).
fn outcome_label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Done => "done",
        Outcome::Partial => "done, some units failed",
        Outcome::Failed => "failed",
        Outcome::Cancelled => "cancelled",
        Outcome::Paused => "paused",
        Outcome::Running | Outcome::Reducing => "—",
    }
}

fn page(title: &str, active: &str, body: &str, live: &str) -> String {
    let nav = [
        ("/", "Overview"),
        ("/volunteers", "Volunteers"),
        ("/api", "API"),
        ("/volunteer", "Donate"),
    ]
    .iter()
    .map(|(href, label)| {
        let current = if *href == active {
            " aria-current=\"page\""
        } else {
            ""
        };
        format!("<a href=\"{href}\"{current}>{label}</a>")
    })
    .collect::<String>();
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · Fallow</title>
<link rel="stylesheet" href="/assets/dashboard.css">
<script src="/assets/errors.js"></script>
<script src="/assets/dashboard.js" defer></script>
</head>
<body data-live="{live}">
<header><a class="brand" href="/">Fallow</a><nav>{nav}</nav><span id="live" class="live" title="live updates">static</span></header>
<div id="js-errors" class="errors" hidden></div>
<main>
{body}
</main>
<footer>Read-only view of this coordinator. <noscript>Live updates need JavaScript; reload for fresh numbers.</noscript> <a href="/metrics">metrics</a> · <a href="/api/export/projects.csv">export</a></footer>
</body>
</html>
"#,
        title = esc(title)
    )
}

fn bar(p: &ProjectSummary) -> String {
    let total = p.total.max(1) as f64;
    let w = |n: u64| format!("{:.2}", 100.0 * n as f64 / total);
    format!(
        "<div class=\"bar\" role=\"img\" aria-label=\"{v} verified, {r} in progress, {f} failed of {t}\"><span class=\"v\" style=\"width:{wv}%\"></span><span class=\"r\" style=\"width:{wr}%\"></span><span class=\"f\" style=\"width:{wf}%\"></span></div>",
        v = p.verified,
        r = p.in_progress,
        f = p.failed,
        t = p.total,
        wv = w(p.verified),
        wr = w(p.in_progress),
        wf = w(p.failed),
    )
}

fn project_row(p: &ProjectSummary) -> String {
    format!(
        "<tr data-project=\"{id}\"><td><a href=\"/projects/{id}\">{name}</a></td><td class=\"wide\">{bar}<small><b data-k=\"percent\">{pct:.1}</b>% · {v} verified · {r} in progress · {pe} pending · {f} failed</small></td><td class=\"num\">{upm:.1}</td><td class=\"num\">{eta}</td></tr>",
        id = p.id,
        name = esc(&p.name),
        bar = bar(p),
        pct = p.percent,
        v = int(p.verified),
        r = int(p.in_progress),
        pe = int(p.pending),
        f = int(p.failed),
        upm = p.units_per_minute,
        eta = eta(p),
    )
}

fn card(label: &str, key: &str, value: String) -> String {
    format!("<div class=\"card\"><span>{label}</span><b data-k=\"{key}\">{value}</b></div>")
}

/// `GET /`.
pub(crate) fn overview(p: &Published) -> String {
    let o = &p.overview;
    let t = &o.totals;
    let mut body = String::new();
    body.push_str("<h1>Progress</h1><section class=\"cards\">");
    body.push_str(&card("projects", "totals.projects", int(t.projects)));
    body.push_str(&card("units verified", "totals.verified", int(t.verified)));
    body.push_str(&card(
        "in progress",
        "totals.in_progress",
        int(t.in_progress),
    ));
    body.push_str(&card("pending", "totals.pending", int(t.pending)));
    body.push_str(&card("failed", "totals.failed", int(t.failed)));
    body.push_str(&card(
        "units / min",
        "totals.units_per_minute",
        format!("{:.1}", t.units_per_minute),
    ));
    body.push_str(&card(
        "workers online",
        "totals.workers_online",
        int(t.workers_online),
    ));
    body.push_str(&card("credit (fuel)", "totals.credit", int(t.credit)));
    let _ = write!(
        body,
        "</section><p class=\"lead\">Workers: <b data-k=\"totals.fleet\">{}</b></p><h2>Projects</h2>",
        esc(&t.fleet)
    );
    body.push_str("<table class=\"projects\"><thead><tr><th>project</th><th class=\"wide\">progress</th><th class=\"num\">units/min</th><th class=\"num\">to finish</th></tr></thead><tbody id=\"projects\">");
    for s in &o.projects {
        body.push_str(&project_row(s));
    }
    if o.projects.is_empty() {
        body.push_str("<tr><td colspan=\"4\">No projects yet: <code>fallow submit MANIFEST.toml</code></td></tr>");
    }
    body.push_str("</tbody></table>");
    let _ = write!(
        body,
        "<section class=\"charts\"><figure><figcaption>Units settled per minute</figcaption><div id=\"chart-throughput\">{}</div></figure><figure><figcaption>Workers online</figcaption><div id=\"chart-workers\">{}</div></figure></section>",
        o.charts.throughput_svg, o.charts.workers_svg
    );
    page("Overview", "/", &body, "overview")
}

/// `GET /projects/{id}`.
pub(crate) fn project(page_data: &ProjectPage) -> String {
    let d = &page_data.detail;
    let p = &d.project;
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1 data-project-id=\"{id}\">{name} <small>project {id}</small></h1>{bar}<p class=\"lead\"><b data-k=\"project.percent\">{pct:.1}</b>% settled · to finish: <b data-k=\"project.eta\">{eta}</b> · <b data-k=\"project.units_per_minute\">{upm:.1}</b> units/min</p>",
        id = p.id,
        name = esc(&p.name),
        bar = bar(p),
        pct = p.percent,
        eta = eta(p),
        upm = p.units_per_minute,
    );
    match p.state {
        protocol::control::State::Paused => body.push_str(
            "<section class=\"waiting\"><h2>Paused</h2><p>Its submitter paused it: no unit is \
             leased until <code>fallow resume</code>; units already leased may still finish.</p></section>",
        ),
        protocol::control::State::Cancelled => body.push_str(
            "<section class=\"waiting\"><h2>Cancelled</h2><p>Its submitter cancelled it: units \
             not yet settled were cancelled; verified results stay downloadable.</p></section>",
        ),
        protocol::control::State::Active => {}
    }
    if !p.waiting.is_empty() {
        body.push_str("<section class=\"waiting\"><h2>Waiting for a worker</h2><ul>");
        for w in &p.waiting {
            let _ = write!(body, "<li>{}</li>", esc(w));
        }
        body.push_str("</ul></section>");
    }
    if !p.warnings.is_empty() {
        body.push_str("<section class=\"waiting\"><h2>Check the project</h2><ul>");
        for w in &p.warnings {
            let _ = write!(body, "<li>{}</li>", esc(w));
        }
        body.push_str("</ul></section>");
    }
    body.push_str("<section class=\"cards\">");
    body.push_str(&card("units", "project.total", int(p.total)));
    body.push_str(&card("verified", "project.verified", int(p.verified)));
    body.push_str(&card(
        "in progress",
        "project.in_progress",
        int(p.in_progress),
    ));
    body.push_str(&card("pending", "project.pending", int(p.pending)));
    body.push_str(&card("failed", "project.failed", int(p.failed)));
    if p.state == protocol::control::State::Cancelled {
        body.push_str(&card("cancelled", "project.cancelled", int(p.cancelled)));
    }
    body.push_str(&card("executions", "project.executions", int(p.executions)));
    body.push_str(&card("disputes", "project.disputes", int(p.disputes)));
    body.push_str(&card(
        "extra replicas",
        "project.extra_replicas",
        int(p.extra_replicas),
    ));
    body.push_str(&card("credit (fuel)", "project.credit", int(p.credit)));
    body.push_str("</section>");
    let _ = write!(
        body,
        "<p class=\"note\">Each unit runs on {r} workers and counts when {q} signed results are byte-identical; disagreements (disputes) get extra replicas, up to {m} executions per unit.</p>",
        r = p.replication,
        q = p.quorum,
        m = p.max_replicas
    );
    body.push_str("<div class=\"split\">");
    if let Some(m) = &d.mosaic {
        let _ = write!(
            body,
            "<figure class=\"mosaic\"><figcaption>Verified tiles: <b id=\"mosaic-tiles\" data-k=\"mosaic.tiles\">{tiles}</b> of {total} (grey: not verified yet)</figcaption><img id=\"mosaic\" src=\"{url}\" width=\"{w}\" height=\"{h}\" alt=\"the picture assembled from verified tiles\"></figure>",
            tiles = m.tiles,
            total = p.total,
            url = esc(&m.url),
            w = m.width,
            h = m.height
        );
    } else {
        let _ = write!(
            body,
            "<figure class=\"mosaic\" hidden><figcaption>Verified tiles: <b id=\"mosaic-tiles\" data-k=\"mosaic.tiles\">0</b> of {} (grey: not verified yet)</figcaption><img id=\"mosaic\" alt=\"the picture assembled from verified tiles\"></figure>",
            p.total
        );
    }
    body.push_str("<figure class=\"units\"><figcaption>Units: <span class=\"key v\">verified</span> <span class=\"key r\">running</span> <span class=\"key p\">pending</span> <span class=\"key f\">failed</span></figcaption><div id=\"unit-map\">");
    match &d.unit_map_svg {
        Some(svg) => body.push_str(svg),
        None => body.push_str("<p>Too many units to draw one by one.</p>"),
    }
    body.push_str("</div></figure></div>");
    body.push_str("<h2>Recent failed executions</h2><table><thead><tr><th>unit</th><th>worker</th><th>reason</th></tr></thead><tbody id=\"recent-failures\">");
    for f in &d.recent_failures {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&f.unit),
            esc(&f.worker),
            esc(&f.reason)
        );
    }
    if d.recent_failures.is_empty() {
        body.push_str("<tr><td colspan=\"3\">none</td></tr>");
    }
    body.push_str("</tbody></table><h2>Failed units</h2><table><thead><tr><th>unit</th><th>reason</th></tr></thead><tbody id=\"failed-units\">");
    for f in &d.failed_units {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td></tr>",
            esc(&f.unit),
            esc(&f.reason)
        );
    }
    if d.failed_units.is_empty() {
        body.push_str("<tr><td colspan=\"2\">none</td></tr>");
    }
    body.push_str("</tbody></table>");
    page(&p.name, "", &body, &format!("project:{}", p.id))
}

/// `GET /volunteers`.
pub(crate) fn volunteers(p: &Published) -> String {
    let mut body = String::from("<h1>Volunteers</h1>");
    let l = &p.leaderboard;
    body.push_str("<div class=\"split\"><section><h2>Accounts by credit</h2><table id=\"leaderboard\"><thead><tr><th>#</th><th>account</th><th>team</th><th class=\"num\">credit (fuel)</th><th class=\"num\">results</th></tr></thead><tbody id=\"accounts\">");
    for r in l.accounts.iter().take(LEADERBOARD_SHOWN) {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            r.rank,
            esc(&r.name),
            esc(&r.team),
            int(r.credit),
            int(r.verified)
        );
    }
    if l.accounts.is_empty() {
        body.push_str("<tr><td colspan=\"5\">No accounts yet.</td></tr>");
    }
    body.push_str("</tbody></table></section><section><h2>Teams by credit</h2><table id=\"teams-board\"><thead><tr><th>#</th><th>team</th><th class=\"num\">credit (fuel)</th><th class=\"num\">accounts</th></tr></thead><tbody id=\"teams\">");
    for r in l.teams.iter().take(LEADERBOARD_SHOWN) {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            r.rank,
            esc(&r.name),
            int(r.credit),
            r.accounts
        );
    }
    if l.teams.is_empty() {
        body.push_str("<tr><td colspan=\"4\">No team credit yet.</td></tr>");
    }
    let _ = write!(
        body,
        "</tbody></table></section></div><p class=\"note\">Top {LEADERBOARD_SHOWN}; everyone in <a href=\"/api/export/accounts.csv\">accounts.csv</a> and <a href=\"/api/export/teams.csv\">teams.csv</a> (also .json).</p>"
    );
    let w = &p.workers;
    let _ = write!(
        body,
        "<h2>Workers by platform</h2><p class=\"lead\"><b data-k=\"totals.workers_online\">{}</b> online of {} known: {}</p><table><thead><tr><th>platform</th><th class=\"num\">workers</th><th class=\"num\">online</th><th class=\"num\">cores</th></tr></thead><tbody>",
        int(w.online),
        int(w.workers.len() as u64),
        esc(&w.fleet)
    );
    for r in &w.platforms {
        let _ = write!(
            body,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            esc(&r.platform),
            int(r.workers),
            int(r.online),
            int(r.cores)
        );
    }
    body.push_str("</tbody></table><h2>Workers</h2>");
    if w.flagged > 0 {
        let _ = write!(
            body,
            "<p class=\"lead flagged\">{} flagged: throttled to one unit a day after repeated wrong or failed results</p>",
            int(w.flagged)
        );
    }
    body.push_str("<table><thead><tr><th>name</th><th>account</th><th>platform</th><th class=\"num\">cores</th><th>status</th></tr></thead><tbody>");
    for r in &w.workers {
        let _ = write!(
            body,
            "<tr{class}><td title=\"{id}\">{name}</td><td>{acc}</td><td>{pl}</td><td class=\"num\">{c}</td><td>{s}{flag}</td></tr>",
            class = if r.flagged { " class=\"flagged\"" } else { "" },
            id = esc(&r.id),
            name = esc(&r.name),
            acc = esc(&r.account),
            pl = esc(&r.platform),
            c = r.cores,
            s = if r.state_reason.is_empty() {
                r.state.to_string()
            } else {
                format!("{}: {}", r.state, esc(&r.state_reason))
            },
            flag = if r.flagged {
                ", flagged: throttled to one unit a day"
            } else {
                ""
            }
        );
    }
    body.push_str("</tbody></table>");
    page("Volunteers", "/volunteers", &body, "overview")
}

/// `GET /api`: the API's index, for people who follow the link.
pub(crate) fn api_index() -> String {
    let rows = [
        (
            "/api/overview",
            "totals, projects, history and charts (the front page)",
        ),
        ("/api/projects", "every project's progress, rate and ETA"),
        (
            "/api/projects/{id}",
            "one project: unit states, failures, picture",
        ),
        (
            "/api/projects/{id}/mosaic.png",
            "the picture of verified tiles (Mandelbrot)",
        ),
        ("/api/workers", "workers, online state, platforms"),
        ("/api/leaderboard", "accounts and teams by credit"),
        (
            "/api/events",
            "server-sent events: `overview` snapshots (`?project=ID`: `project`)",
        ),
        (
            "/api/export/projects.json",
            "stats export (also .csv; workers, accounts, teams)",
        ),
        ("/metrics", "Prometheus text format"),
    ];
    let mut body = String::from("<h1>JSON API</h1><p>Read-only; GET only.</p><table><tbody>");
    for (path, what) in rows {
        let _ = write!(
            body,
            "<tr><td><code>{}</code></td><td>{}</td></tr>",
            esc(path),
            esc(what)
        );
    }
    body.push_str("</tbody></table>");
    page("API", "/api", &body, "none")
}

/// A line chart of `(unix ms, value)` points over their time span.
pub(crate) fn line_chart(title: &str, unit: &str, points: &[(u64, f64)]) -> String {
    const W: f64 = 600.0;
    const H: f64 = 160.0;
    const LEFT: f64 = 44.0;
    const BOTTOM: f64 = 20.0;
    const TOP: f64 = 10.0;
    let mut svg = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{}\" preserveAspectRatio=\"none\">",
        esc(title)
    );
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        svg.push_str(
            "<text x=\"300\" y=\"85\" text-anchor=\"middle\">collecting data…</text></svg>",
        );
        return svg;
    };
    let span = last.0.saturating_sub(first.0).max(1) as f64;
    let max = nice_max(points.iter().map(|p| p.1).fold(0.0, f64::max));
    let x = |t: u64| LEFT + (W - LEFT - 4.0) * (t.saturating_sub(first.0) as f64 / span);
    let y = |v: f64| TOP + (H - TOP - BOTTOM) * (1.0 - v / max);
    for frac in [0.0, 0.5, 1.0] {
        let v = max * frac;
        let _ = write!(
            svg,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{W}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\"/><text class=\"axis\" x=\"{lx}\" y=\"{ty:.1}\" text-anchor=\"end\">{label}</text>",
            yy = y(v),
            lx = LEFT - 4.0,
            ty = y(v) + 4.0,
            label = short(v)
        );
    }
    let mut line = String::new();
    for (i, &(t, v)) in points.iter().enumerate() {
        let _ = write!(
            line,
            "{}{:.1},{:.1}",
            if i == 0 { "M" } else { " L" },
            x(t),
            y(v)
        );
    }
    let _ = write!(
        svg,
        "<path class=\"area\" d=\"{line} L{:.1},{:.1} L{:.1},{:.1} Z\"/><path class=\"line\" d=\"{line}\"/>",
        x(last.0),
        y(0.0),
        x(first.0),
        y(0.0)
    );
    let _ = write!(
        svg,
        "<text class=\"axis\" x=\"{LEFT}\" y=\"{H}\">{ago} ago</text><text class=\"axis\" x=\"{W}\" y=\"{H}\" text-anchor=\"end\">now · {unit}</text></svg>",
        ago = duration((span / 1000.0) as u64),
        unit = esc(unit)
    );
    svg
}

/// A round number at or above `v` for an axis maximum.
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    for step in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if step * magnitude >= v {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// One square per unit, coloured by state letter (`v`, `r`, `p`, `f`); runs of one state
/// in a row are drawn as one rectangle to keep the SVG small.
pub(crate) fn unit_map(states: &str) -> String {
    const CELL: usize = 10;
    let n = states.len().max(1);
    let cols = ((n as f64).sqrt() * 1.6).ceil().clamp(1.0, 64.0) as usize;
    let rows = n.div_ceil(cols);
    let mut svg = format!(
        "<svg class=\"unit-map\" viewBox=\"0 0 {w} {h}\" width=\"{dw}\" height=\"{dh}\" role=\"img\" aria-label=\"state of each unit\" data-units=\"{n}\">",
        w = cols * CELL,
        h = rows * CELL,
        dw = cols * CELL * 2,
        dh = rows * CELL * 2
    );
    let bytes = states.as_bytes();
    for (row, chunk) in bytes.chunks(cols).enumerate() {
        let mut start = 0;
        while start < chunk.len() {
            let state = chunk[start];
            let mut end = start + 1;
            while end < chunk.len() && chunk[end] == state {
                end += 1;
            }
            let class = match state {
                b'v' => "v",
                b'r' => "r",
                b'f' => "f",
                _ => "p",
            };
            let _ = write!(
                svg,
                "<rect class=\"{class}\" x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{h}\"/>",
                x = start * CELL + 1,
                y = row * CELL + 1,
                w = (end - start) * CELL - 2,
                h = CELL - 2
            );
            start = end;
        }
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(int(0), "0");
        assert_eq!(int(1234567), "1,234,567");
        assert_eq!(duration(59), "59 s");
        assert_eq!(duration(125), "2 min 05 s");
        assert_eq!(duration(7260), "2 h 01 min");
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(180.0), 200.0);
    }

    #[test]
    fn charts_and_unit_maps_are_svg() {
        let empty = line_chart("t", "u", &[]);
        assert!(empty.starts_with("<svg") && empty.ends_with("</svg>"));
        let chart = line_chart("t", "u", &[(0, 1.0), (2000, 3.0)]);
        assert!(chart.contains("class=\"line\""), "{chart}");
        let map = unit_map("vvrpf");
        assert_eq!(map.matches("<rect").count(), 4, "{map}");
    }

    /// A finished project reads "done" only when nothing failed: the row of a project
    /// whose units all failed says "failed" (it once said "100.0 % … done").
    #[test]
    fn a_finished_project_says_done_partly_failed_or_failed() {
        let row = |outcome| {
            project_row(&ProjectSummary {
                id: 1,
                name: "p".into(),
                total: 4,
                failed: 4,
                finished: true,
                outcome,
                percent: 100.0,
                ..ProjectSummary::default()
            })
        };
        assert!(row(Outcome::Failed).contains("<td class=\"num\">failed</td>"));
        assert!(row(Outcome::Done).contains("<td class=\"num\">done</td>"));
        assert!(row(Outcome::Partial).contains(">done, some units failed</td>"));
        assert!(row(Outcome::Cancelled).contains("<td class=\"num\">cancelled</td>"));
        let paused = project_row(&ProjectSummary {
            total: 4,
            outcome: Outcome::Paused,
            ..ProjectSummary::default()
        });
        assert!(paused.contains("<td class=\"num\">paused</td>"), "{paused}");
    }
}
