//! Stop strings, as OpenAI clients ask for them: the answer ends before the first occurrence of
//! any of them, and a streamed answer holds back the text that may be the start of one, so that
//! no part of a stop string is ever sent.

/// Text as it streams, cut at the first stop string.
#[derive(Debug, Default)]
pub struct StopText {
    stops: Vec<String>,
    /// Everything received, and how much of it has been released.
    text: String,
    released: usize,
    stopped: bool,
}

impl StopText {
    /// Stops at any of `stops` (empty strings are ignored).
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            ..Self::default()
        }
    }

    /// Whether a stop string has been met.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Takes more text; returns what can be released now (nothing of a stop string, nor of what
    /// may become one).
    pub fn push(&mut self, piece: &str) -> String {
        if self.stopped {
            return String::new();
        }
        self.text.push_str(piece);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.text[self.released..].find(s.as_str()))
            .min()
        {
            self.stopped = true;
            let end = self.released + at;
            return self.release_to(end);
        }
        // Keep back the longest tail that is a proper prefix of a stop string.
        let held = self
            .stops
            .iter()
            .map(|s| held_back(&self.text[self.released..], s))
            .max()
            .unwrap_or(0);
        let end = self.text.len() - held;
        self.release_to(end)
    }

    /// The text held back, once the answer is over without a stop.
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        let end = self.text.len();
        self.release_to(end)
    }

    /// All the text released so far and to come: the answer.
    pub fn answer(&self) -> &str {
        &self.text[..self.released]
    }

    fn release_to(&mut self, end: usize) -> String {
        let out = self.text[self.released..end].to_owned();
        self.released = end;
        out
    }
}

/// The length of the longest end of `text` that is a proper prefix of `stop`.
fn held_back(text: &str, stop: &str) -> usize {
    (1..stop.len())
        .rev()
        .filter(|&n| n <= text.len() && stop.is_char_boundary(n))
        .find(|&n| text.is_char_boundary(text.len() - n) && text.ends_with(&stop[..n]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool, String) {
        let mut s = StopText::new(stops.iter().map(|s| (*s).to_owned()).collect());
        let mut out: Vec<String> = pieces.iter().map(|p| s.push(p)).collect();
        out.push(s.finish());
        (out, s.stopped(), s.answer().to_owned())
    }

    #[test]
    fn text_ends_before_the_stop_and_no_part_of_it_is_sent() {
        let (out, stopped, answer) = stream(&["\n\n"], &["The port", " is 8080.\n", "\nMore"]);
        assert_eq!(out, ["The port", " is 8080.", "", ""]);
        assert!(stopped);
        assert_eq!(answer, "The port is 8080.");
    }

    #[test]
    fn a_false_start_is_released_when_it_turns_out_not_to_be_a_stop() {
        let (out, stopped, answer) = stream(&["END"], &["the EN", "D", ""]);
        assert_eq!(out, ["the ", "", "", ""]);
        assert!(stopped);
        assert_eq!(answer, "the ");
        let (out, stopped, answer) = stream(&["END"], &["the EN", "ding"]);
        assert_eq!(out, ["the ", "ENding", ""]);
        assert!(!stopped);
        assert_eq!(answer, "the ENding");
    }

    #[test]
    fn without_stops_everything_goes_out_at_once() {
        let (out, stopped, _) = stream(&[], &["a", "bé"]);
        assert_eq!(out, ["a", "bé", ""]);
        assert!(!stopped);
    }

    #[test]
    fn the_earliest_of_several_stops_wins_and_text_held_back_is_flushed_at_the_end() {
        let (out, _, answer) = stream(&["Q:", "x"], &["a Q: b x"]);
        assert_eq!(out, ["a ", ""]);
        assert_eq!(answer, "a ");
        let (out, stopped, answer) = stream(&["Question"], &["done. Quest"]);
        assert_eq!(out, ["done. ", "Quest"]);
        assert!(!stopped);
        assert_eq!(answer, "done. Quest");
    }
}
