//! Drawing: the chat, the sidebar of statistics, the sources pane, the input line, the status
//! line and the help popup. Reads the [`App`] state only; never changes it.

use ratatui::Frame;
use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Gauge, Paragraph, Sparkline, Wrap};

use super::app::{AnswerStatus, App, Entry, Focus, TurnState, commands};
use super::keymap::{Action, HELP_CHAR, SOURCE_NEXT_CHAR, SOURCE_PREV_CHAR};
use super::markdown::{self, Palette};
use crate::speculative::{Mode, TokenKind};

/// Colours from the config.
#[derive(Debug, Clone, Copy)]
pub struct Theme {
    pub palette: Palette,
    pub question: Color,
    pub accent: Color,
}

impl Theme {
    pub fn from_config(c: &crate::config::TuiConfig) -> Self {
        let color = |s: &str, d: Color| s.parse().unwrap_or(d);
        Self {
            palette: Palette {
                accepted: color(&c.accepted, Color::Green),
                corrected: color(&c.corrected, Color::Red),
                bonus: color(&c.bonus, Color::Cyan),
            },
            question: color(&c.question, Color::Yellow),
            accent: color(&c.accent, Color::Blue),
        }
    }
}

const SIDEBAR: u16 = 30;

pub fn draw(f: &mut Frame, app: &App, theme: &Theme) {
    let area = f.area();
    let [main, status] = split_v(area, [Constraint::Min(3), Constraint::Length(1)]);
    let sidebar_w = if main.width >= 70 { SIDEBAR } else { 0 };
    let [left, right] = split_h(main, [Constraint::Min(20), Constraint::Length(sidebar_w)]);
    let input = app.editor.text();
    let input_h =
        (input.lines().count().max(1) + usize::from(input.ends_with('\n'))).min(5) as u16 + 2;
    let sources_h = if app.show_sources {
        (left.height / 3).max(5)
    } else {
        0
    };
    let [chat, sources, input] = split_v(
        left,
        [
            Constraint::Min(3),
            Constraint::Length(sources_h),
            Constraint::Length(input_h),
        ],
    );
    draw_chat(f, app, theme, chat);
    if app.show_sources {
        draw_sources(f, app, theme, sources);
    }
    draw_input(f, app, theme, input);
    if sidebar_w > 0 {
        draw_sidebar(f, app, theme, right);
    }
    draw_status(f, app, theme, status);
    if app.show_help {
        draw_help(f, app, theme, area);
    } else if app.source_open {
        draw_source_text(f, app, theme, area);
    }
    neutralize_buffer(f.buffer_mut());
}

/// Documents, file names and model output are untrusted: ratatui drops control characters from
/// text, and this pass makes sure, whatever a widget let through, that no cell reaches the
/// terminal with a control character or a bidirectional override.
pub fn neutralize_buffer(buf: &mut ratatui::buffer::Buffer) {
    for cell in buf.content.iter_mut() {
        if cell.symbol().chars().any(crate::safe_text::is_unsafe) {
            cell.set_symbol("\u{FFFD}");
        }
    }
}

fn split_v<const N: usize>(area: Rect, c: [Constraint; N]) -> [Rect; N] {
    Layout::default()
        .direction(Direction::Vertical)
        .constraints(c)
        .areas(area)
}

fn split_h<const N: usize>(area: Rect, c: [Constraint; N]) -> [Rect; N] {
    Layout::default()
        .direction(Direction::Horizontal)
        .constraints(c)
        .areas(area)
}

fn block<'a>(title: &'a str, theme: &Theme, focused: bool) -> Block<'a> {
    let style = if focused {
        Style::default()
            .fg(theme.accent)
            .add_modifier(Modifier::BOLD)
    } else {
        Style::default().fg(theme.accent)
    };
    Block::default()
        .borders(Borders::ALL)
        .border_style(style)
        .title(Span::styled(format!(" {title} "), style))
}

fn chat_lines(app: &App, theme: &Theme, width: usize) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    let palette = app.colors.then_some(&theme.palette);
    let dim = Style::default().fg(Color::DarkGray);
    let entries = &app.conversation.entries;
    if entries.is_empty() {
        lines.extend(markdown::plain(
            &format!(
                "Ask a question about the documents in {}. {} sends; {HELP_CHAR} or {} shows the \
                 keys.",
                app.folder,
                app.keymap.hint(Action::Send),
                app.keymap.hint(Action::Help)
            ),
            dim,
            width,
        ));
    }
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            lines.push(Line::default());
        }
        let q_style = Style::default()
            .fg(theme.question)
            .add_modifier(Modifier::BOLD);
        lines.extend(markdown::plain(
            &format!("› {}", e.question),
            q_style,
            width,
        ));
        if let Some(partial) = &e.partial_index {
            lines.extend(markdown::plain(
                &format!("⚠ {partial}"),
                Style::default().fg(Color::Yellow),
                width,
            ));
        }
        lines.extend(markdown::render(&e.tokens, palette, width));
        let turn = (i + 1 == entries.len()).then_some(&app.conversation.turn);
        if let Some(note) = entry_note(e, turn) {
            lines.extend(markdown::plain(&note.0, note.1, width));
        }
    }
    lines
}

fn entry_note(e: &Entry, turn: Option<&TurnState>) -> Option<(String, Style)> {
    let dim = Style::default().fg(Color::DarkGray);
    match &e.status {
        AnswerStatus::Streaming => Some((
            match turn {
                Some(TurnState::Retrieving) => "retrieving…".into(),
                Some(TurnState::Prefilling {
                    done,
                    total,
                    seconds,
                }) => format!(
                    "reading the documents: {}…",
                    crate::runtime::gauge(*done, *total, "tokens", *seconds)
                ),
                Some(TurnState::Cancelling) => "cancelling…".into(),
                _ => "▍".into(),
            },
            dim,
        )),
        AnswerStatus::Cancelled => {
            Some(("[cancelled]".into(), Style::default().fg(Color::Magenta)))
        }
        AnswerStatus::Failed(err) => {
            Some((format!("[error] {err}"), Style::default().fg(Color::Red)))
        }
        AnswerStatus::Done => e.stats.as_ref().map(|s| {
            let changed = if e.index_changed {
                " · index changed meanwhile"
            } else {
                ""
            };
            (
                format!(
                    "[{}] {} tokens · {:.1} tok/s · accepted {}/{}{changed}",
                    e.mode, s.generated_tokens, s.decode_tok_s, s.accepted, s.drafted
                ),
                dim,
            )
        }),
    }
}

fn draw_chat(f: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let title = format!("rapid-chat · {}", app.folder);
    let b = block(&title, theme, app.focus == Focus::Chat);
    let inner = b.inner(area);
    f.render_widget(b, area);
    let lines = chat_lines(app, theme, inner.width as usize);
    let height = inner.height as usize;
    let max_scroll = lines.len().saturating_sub(height);
    let scroll = app.scroll.min(max_scroll);
    let start = lines.len().saturating_sub(height + scroll);
    let visible: Vec<Line> = lines.into_iter().skip(start).take(height).collect();
    f.render_widget(Paragraph::new(visible), inner);
}

fn draw_sources(f: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let title = format!(
        "sources given to the drafter ({}, {SOURCE_NEXT_CHAR}/{SOURCE_PREV_CHAR}, {})",
        app.keymap.hint(Action::Focus),
        app.keymap.hint(Action::Send)
    );
    let b = block(&title, theme, app.focus == Focus::Sources);
    let inner = b.inner(area);
    f.render_widget(b, area);
    let sources = app.conversation.current_sources();
    let lines: Vec<Line> = if sources.is_empty() {
        vec![Line::styled(
            "no sources yet",
            Style::default().fg(Color::DarkGray),
        )]
    } else {
        let first = app
            .selected_source
            .saturating_sub(inner.height.saturating_sub(1) as usize);
        sources
            .iter()
            .enumerate()
            .skip(first)
            .map(|(i, s)| {
                let page = s.page.map(|p| format!(" p.{p}")).unwrap_or_default();
                let style = if i == app.selected_source && app.focus == Focus::Sources {
                    Style::default().add_modifier(Modifier::REVERSED)
                } else {
                    Style::default()
                };
                Line::styled(format!("{:>6.2}  {}{page}", s.score, s.path), style)
            })
            .collect()
    };
    f.render_widget(Paragraph::new(lines), inner);
}

fn draw_input(f: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let keys = &app.keymap;
    let title = if app.conversation.busy() {
        format!("question ({} stops the answer)", keys.hint(Action::Cancel))
    } else {
        format!(
            "question ({} sends, {} new line)",
            keys.hint(Action::Send),
            keys.hint(Action::NewLine)
        )
    };
    let b = block(&title, theme, app.focus == Focus::Input);
    let inner = b.inner(area);
    f.render_widget(b, area);
    let input = app.editor.text();
    let text: Vec<Line> = input.split('\n').map(|l| Line::raw(l.to_owned())).collect();
    let before = &input[..app.editor.cursor()];
    let row = before.matches('\n').count();
    let col = unicode_width::UnicodeWidthStr::width(before.rsplit('\n').next().unwrap_or(""));
    let skip = row.saturating_sub(inner.height.saturating_sub(1) as usize);
    f.render_widget(Paragraph::new(text).scroll((skip as u16, 0)), inner);
    if app.focus == Focus::Input && !app.show_help {
        let x = inner.x + (col as u16).min(inner.width.saturating_sub(1));
        let y = inner.y + (row - skip) as u16;
        f.set_cursor_position((x, y));
    }
}

fn draw_sidebar(f: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let b = block("stats", theme, false);
    let inner = b.inner(area);
    f.render_widget(b, area);
    let label = Style::default().fg(Color::DarkGray);
    let room = (inner.width as usize).saturating_sub(11);
    let kv = |k: &str, v: String| {
        Line::from(vec![
            Span::styled(format!("{k:<10} "), label),
            Span::raw(fit(&v, room)),
        ])
    };
    let head = |t: &str| {
        Line::styled(
            t.to_owned(),
            Style::default()
                .fg(theme.accent)
                .add_modifier(Modifier::BOLD),
        )
    };
    let mut lines = Vec::new();
    match (&app.conversation.engine, &app.conversation.engine_error) {
        (Some(e), _) => {
            let stem = |n: &str| n.trim_end_matches(".gguf").to_owned();
            lines.push(kv("target", stem(&e.target)));
            lines.push(kv(
                "drafter",
                if e.self_speculation {
                    "same (self-spec)".into()
                } else {
                    stem(&e.drafter)
                },
            ));
            // Where the models run, whole: the reason for a CPU run matters (wrapped at words
            // under the value, not cut, and counted as lines so nothing below is pushed out).
            for (i, row) in word_wrap(&e.device, room).into_iter().enumerate() {
                let key = if i == 0 { "device" } else { "" };
                lines.push(Line::from(vec![
                    Span::styled(format!("{key:<10} "), label),
                    Span::raw(row),
                ]));
            }
        }
        (None, Some(_)) => lines.push(Line::styled(
            "model failed to load",
            Style::default().fg(Color::Red),
        )),
        (None, None) => lines.push(Line::styled("loading the model…", label)),
    }
    let last = app.conversation.entries.last();
    let s = last.and_then(|e| e.stats.as_ref());
    let (tctx, dctx) = app
        .conversation
        .engine
        .as_ref()
        .map_or((0, 0), |e| (e.target_ctx, e.draft_ctx));
    // Used of the size the answer had (a conversation saved under other settings may have used
    // more than the current size).
    let used = |used: usize, size: usize, now: usize| match size {
        0 if used > now => used.to_string(),
        0 => format!("{used}/{now}"),
        size => format!("{used}/{size}"),
    };
    lines.push(kv(
        "target ctx",
        s.map_or(format!("0/{tctx}"), |s| {
            used(s.target_ctx_tokens, s.target_n_ctx, tctx)
        }),
    ));
    lines.push(kv(
        "draft ctx",
        s.map_or(format!("0/{dctx}"), |s| {
            used(s.draft_ctx_tokens, s.draft_n_ctx, dctx)
        }),
    ));
    if let Some(e) = &app.conversation.engine {
        lines.push(kv("sized by", e.ctx_bound.clone()));
    }
    if let Some(v) = last.and_then(|e| e.view.as_ref()) {
        lines.push(kv(
            "in view",
            format!("{}/{} chunks", v.chunks_in_view, v.chunks_total),
        ));
    }
    let p = &app.settings;
    lines.push(kv(
        "mode",
        format!("{} γ{} η{} T{}", app.settings.mode, p.gamma, p.eta, p.temp),
    ));
    lines.push(head("this answer"));
    if last.is_some() {
        // The engine's statistics of the answer, running while it is written: read, never
        // recomputed here.
        let st = s.cloned().unwrap_or_default();
        lines.push(kv("tok/s", format!("{:.1}", st.decode_tok_s)));
        lines.push(kv(
            "accepted",
            format!("{} ({:.0}%)", st.accepted, pct(st.accepted, st.drafted)),
        ));
        lines.push(kv(
            "drafted",
            format!("{}, rejected {}", st.drafted, st.drafted - st.accepted),
        ));
        lines.push(kv("tok/round", format!("{:.2}", st.mean_accepted_len)));
        if st.verify_shape > 1 {
            // Every round one padded batch of this size (a GPU keeps its CUDA graph).
            lines.push(kv("batch", format!("{} tokens, fixed", st.verify_shape)));
        }
        if st.lookup_drafted > 0 {
            lines.push(kv(
                "lookups",
                format!("{}/{} accepted", st.lookup_accepted, st.lookup_drafted),
            ));
        }
        let cached = if st.restored_tokens > 0 {
            " (docs cached)"
        } else {
            ""
        };
        lines.push(kv("prefill", format!("{:.1} s{cached}", st.prefill_s)));
        lines.push(kv("1st token", format!("{:.2} s", st.ttft_s)));
    }
    lines.push(kv("speed-up", speedup(app)));
    // This run's answers: a saved one was decoded under other conditions (another build, a
    // busy machine) and would skew the rate.
    lines.push(head("session"));
    let done: Vec<&Entry> = app
        .conversation
        .entries
        .iter()
        .filter(|e| !e.earlier && e.status != AnswerStatus::Streaming && e.stats.is_some())
        .collect();
    let (mut tokens, mut secs, mut drafted, mut accepted) = (0usize, 0f64, 0usize, 0usize);
    for e in &done {
        if let Some(s) = &e.stats {
            tokens += s.generated_tokens;
            secs += s.decode_s;
            drafted += s.drafted;
            accepted += s.accepted;
        }
    }
    let saved = app
        .conversation
        .entries
        .iter()
        .filter(|e| e.earlier)
        .count();
    lines.push(kv(
        "answers",
        if saved > 0 {
            format!("{} (+{saved} saved)", done.len())
        } else {
            done.len().to_string()
        },
    ));
    // No answer yet in this run: nothing measured, not a rate of zero.
    let (rate, share) = if done.is_empty() || secs <= 0.0 {
        ("–".to_owned(), "–".to_owned())
    } else {
        (
            format!("{:.1}", tokens as f64 / secs),
            format!("{:.0}%", pct(accepted, drafted)),
        )
    };
    lines.push(kv("tok/s", rate));
    lines.push(kv("accepted", share));
    let used = (lines.len() as u16).min(inner.height);
    let [text, spark] = split_v(inner, [Constraint::Length(used), Constraint::Min(0)]);
    f.render_widget(Paragraph::new(lines).wrap(Wrap { trim: true }), text);
    if spark.height >= 2
        && let Some(e) = last
    {
        let w = spark.width as usize;
        let data: Vec<u64> = e.rounds.iter().rev().take(w).rev().copied().collect();
        let [l, g] = split_v(spark, [Constraint::Length(1), Constraint::Min(1)]);
        f.render_widget(Paragraph::new(Line::styled("accepted per round", label)), l);
        f.render_widget(
            Sparkline::default()
                .data(&data)
                .style(Style::default().fg(theme.palette.accepted)),
            g,
        );
    }
}

/// `text` in rows of at most `width` columns, broken at spaces (a word longer than a row is cut
/// with an ellipsis).
fn word_wrap(text: &str, width: usize) -> Vec<String> {
    let mut rows: Vec<String> = Vec::new();
    let mut row = String::new();
    for word in text.split_whitespace() {
        let wide = unicode_width::UnicodeWidthStr::width(row.as_str())
            + usize::from(!row.is_empty())
            + unicode_width::UnicodeWidthStr::width(word);
        if !row.is_empty() && wide > width {
            rows.push(std::mem::take(&mut row));
        }
        if !row.is_empty() {
            row.push(' ');
        }
        row.push_str(word);
    }
    rows.push(row);
    rows.into_iter().map(|r| fit(&r, width)).collect()
}

/// `text` cut to `width` columns with an ellipsis.
fn fit(text: &str, width: usize) -> String {
    if unicode_width::UnicodeWidthStr::width(text) <= width {
        return text.to_owned();
    }
    let mut out = String::new();
    let mut w = 0;
    for c in text.chars() {
        let cw = unicode_width::UnicodeWidthChar::width(c).unwrap_or(0);
        if w + cw + 1 > width {
            break;
        }
        out.push(c);
        w += cw;
    }
    out.push('…');
    out
}

fn pct(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        100.0 * a as f64 / b as f64
    }
}

/// The last answer's speed over plain target steps at the same depth in this conversation (the
/// engine's own measure, see `Stats::speedup`); none while it is being written, for the drafter
/// answering alone, or when no plain step was measured.
fn speedup(app: &App) -> String {
    app.conversation
        .entries
        .last()
        .filter(|e| e.mode != Mode::Rag && e.status != AnswerStatus::Streaming)
        .and_then(|e| e.stats.as_ref())
        .filter(|s| s.speedup > 0.0)
        .map_or_else(|| "—".into(), |s| format!("{:.2}x vs plain", s.speedup))
}

fn draw_status(f: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    if let Some((progress, seconds)) = &app.index.progress {
        let gauge = Gauge::default()
            .gauge_style(Style::default().fg(theme.accent))
            .ratio(progress.fraction().clamp(0.0, 1.0))
            .label(format!(
                "indexing {}",
                crate::runtime::index_gauge(progress, *seconds)
            ));
        f.render_widget(gauge, area);
        return;
    }
    let mut spans = Vec::new();
    if app.colors {
        let p = &theme.palette;
        spans.push(Span::styled(
            "accepted ",
            markdown::kind_style(TokenKind::Accepted, Some(p)),
        ));
        spans.push(Span::styled(
            "corrected",
            markdown::kind_style(TokenKind::Corrected, Some(p)),
        ));
        spans.push(Span::raw(" "));
        spans.push(Span::styled(
            "bonus ",
            markdown::kind_style(TokenKind::Bonus, Some(p)),
        ));
        spans.push(Span::raw("target │ "));
    }
    let message = app
        .notice
        .clone()
        .or_else(|| {
            app.conversation
                .engine_error
                .as_ref()
                .map(|e| format!("model: {e}"))
        })
        .or_else(|| app.index.last_change.clone())
        .unwrap_or_default();
    if !message.is_empty() {
        spans.push(Span::styled(
            format!("{message} │ "),
            Style::default().fg(Color::DarkGray),
        ));
    }
    spans.push(Span::styled(
        format!("{HELP_CHAR}/{} help", app.keymap.hint(Action::Help)),
        Style::default().fg(Color::DarkGray),
    ));
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn popup(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

fn draw_help(f: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let row = |(how, what): (String, &'static str)| {
        Line::from(vec![
            Span::styled(format!("{how:<22}"), Style::default().fg(theme.accent)),
            Span::raw(what),
        ])
    };
    let mut lines: Vec<Line> = app.keymap.help().into_iter().map(row).collect();
    lines.push(Line::default());
    lines.extend(commands::help().into_iter().map(row));
    let r = popup(area, 78, lines.len() as u16 + 2);
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines)
            .block(block("keys (any key closes)", theme, true))
            .wrap(Wrap { trim: false }),
        r,
    );
}

fn draw_source_text(f: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let Some(s) = app.conversation.current_sources().get(app.selected_source) else {
        return;
    };
    let r = popup(
        area,
        area.width.saturating_sub(6),
        area.height.saturating_sub(4),
    );
    let page = s.page.map(|p| format!(" p.{p}")).unwrap_or_default();
    let title = format!("{}{page} [{}..{}]", s.path, s.start, s.end);
    f.render_widget(Clear, r);
    let text = if s.text.is_empty() {
        "(text not kept for answers from earlier sessions)".to_owned()
    } else {
        s.text.clone()
    };
    f.render_widget(
        Paragraph::new(text)
            .block(block(&title, theme, true))
            .wrap(Wrap { trim: false }),
        r,
    );
}
