//! Rendering a prompt together with where the values that filled it are.
//!
//! The cache stores a recorded request as its template's text once (the literal parts between
//! values, by hash) and, per artifact, only the values (see `cache::layout`). That needs to know
//! which bytes of a rendered message came from `{{ ... }}` and which from the template: minijinja
//! hands every value it prints to the environment's formatter, so the formatter here notes how far
//! the output had got before and after it wrote the value. Output captured by a `{% set %}` or a
//! filter block is not written to the message while it is captured, so it moves nothing and is not
//! noted; when it is printed, it is one value. What the spans are used for never changes the
//! message: any split into literal parts and values joins back to the same text, so an odd
//! template (a value equal to the text around it, say) can only store less compactly, never
//! differently.

use std::cell::{Cell, RefCell};

use minijinja::value::Value;
use minijinja::{Error, Output, State};

/// Byte ranges of a rendered message that values filled, in order and not overlapping.
pub type Fills = Vec<(u32, u32)>;

thread_local! {
    /// Bytes written so far to the message being rendered by [`render_with_fills`].
    static WRITTEN: Cell<usize> = const { Cell::new(0) };
    /// The values' byte ranges noted so far in that message.
    static NOTED: RefCell<Fills> = const { RefCell::new(Vec::new()) };
}

/// The environment's formatter: prints a value as minijinja's default does, and notes its range
/// when it went to the message (not to a capture, and not to a render of another kind, which
/// writes to a string of its own and so moves nothing).
pub(super) fn noting_formatter(
    out: &mut Output,
    state: &State,
    value: &Value,
) -> Result<(), Error> {
    let before = WRITTEN.get();
    minijinja::escape_formatter(out, state, value)?;
    let after = WRITTEN.get();
    if after > before {
        NOTED.with_borrow_mut(|noted| noted.push((before as u32, after as u32)));
    }
    Ok(())
}

/// The message being rendered, counting what is written to it.
struct Counted(Vec<u8>);

impl std::io::Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        WRITTEN.set(WRITTEN.get() + buf.len());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Renders `template` over `context`, trimmed of leading and trailing whitespace, with the ranges
/// (into the trimmed text) of the values that filled it.
pub(super) fn render_with_fills(
    template: &minijinja::Template<'_, '_>,
    context: &Value,
) -> Result<(String, Fills), Error> {
    WRITTEN.set(0);
    NOTED.with_borrow_mut(Vec::clear);
    let mut out = Counted(Vec::with_capacity(2048));
    template.render_captured_to(context, &mut out)?;
    let text = String::from_utf8(out.0).map_err(|e| {
        // Invariant: minijinja writes only `str`s, so the bytes are UTF-8; kept as an error, not
        // a panic, since it costs nothing.
        Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string())
    })?;
    let noted = NOTED.with_borrow_mut(std::mem::take);
    Ok(trim_with_fills(text, noted))
}

/// `text` without its leading and trailing whitespace, in the same buffer, and `fills` moved to
/// match (cut where the trim cut into a value, dropped where it removed one).
fn trim_with_fills(mut text: String, fills: Fills) -> (String, Fills) {
    text.truncate(text.trim_end().len());
    let start = text.len() - text.trim_start().len();
    text.drain(..start);
    let (start, end) = (start as u32, text.len() as u32);
    let fills = fills
        .into_iter()
        .map(|(a, b)| {
            (
                a.saturating_sub(start).min(end),
                b.saturating_sub(start).min(end),
            )
        })
        .filter(|(a, b)| b > a)
        .collect();
    (text, fills)
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::{Environment, context};

    fn env() -> Environment<'static> {
        let mut env = Environment::new();
        env.set_formatter(noting_formatter);
        env.set_trim_blocks(true);
        env
    }

    fn filled(source: &str, context: Value) -> (String, Vec<String>) {
        let env = env();
        let template = env.template_from_str(source).unwrap();
        let (text, fills) = render_with_fills(&template, &context).unwrap();
        // The same text as a plain render gives, trimmed.
        assert_eq!(text, template.render(&context).unwrap().trim());
        let values = fills
            .iter()
            .map(|&(a, b)| text[a as usize..b as usize].to_string())
            .collect();
        (text, values)
    }

    #[test]
    fn values_are_found_where_they_were_printed() {
        let (text, values) = filled(
            "  Queue: {{ queue }}\n{% for t in tags %}- {{ t | upper }}\n{% endfor %}About {{ topic }}.  ",
            context!(queue => "Billing", tags => vec!["a", "bb"], topic => "a refund"),
        );
        assert_eq!(text, "Queue: Billing\n- A\n- BB\nAbout a refund.");
        assert_eq!(values, ["Billing", "A", "BB", "a refund"]);
    }

    #[test]
    fn captured_output_is_one_value_when_printed_and_none_when_not() {
        let (text, values) = filled(
            "{% set x %}<{{ a }}>{% endset %}{{ x | length }} {% filter upper %}{{ a }}b{% endfilter %}!",
            context!(a => "hey"),
        );
        assert_eq!(text, "5 HEYB!");
        assert_eq!(values, ["5", "HEYB"]);
    }

    #[test]
    fn the_trim_cuts_values_at_the_edges() {
        let (text, values) = filled("{{ a }}x{{ b }}", context!(a => "  lead", b => "trail \n"));
        assert_eq!(text, "leadxtrail");
        assert_eq!(values, ["lead", "trail"]);
        let (text, values) = filled("{{ a }} x", context!(a => "   "));
        assert_eq!(text, "x");
        assert!(values.is_empty());
    }

    #[test]
    fn a_render_of_another_kind_notes_nothing() {
        let env = env();
        let template = env.template_from_str("{{ a }}").unwrap();
        NOTED.with_borrow_mut(Vec::clear);
        assert_eq!(template.render(context!(a => "x")).unwrap(), "x");
        assert!(NOTED.with_borrow(Vec::is_empty));
    }
}
