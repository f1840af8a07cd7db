//! The server-sent events of Gradio's result stream (`GET
//! /gradio_api/call/<api_name>/<event_id>`): `event:` and `data:` lines, a blank line ends
//! an event. Gradio sends `generating` (a generator's partial output), `complete` (the
//! outputs), `error` (the app failed) and `heartbeat` events.

use std::io::BufRead;

/// One event: its name (`message` when the stream names none) and its data lines joined
/// by `\n`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field.
    pub name: String,
    /// The `data:` fields, joined by `\n`.
    pub data: String,
}

/// Reads events from `reader` one at a time (the SSE line format: `field: value`, a
/// leading space of the value dropped, `:` comments ignored, a blank line dispatches).
pub struct Events<R> {
    reader: R,
    line: String,
}

impl<R: BufRead> Events<R> {
    /// Events read from `reader`.
    pub fn new(reader: R) -> Events<R> {
        Events {
            reader,
            line: String::new(),
        }
    }

    /// The next event; `Ok(None)` when the stream ends (an event cut off by the end of the
    /// stream is still returned).
    pub fn next_event(&mut self) -> std::io::Result<Option<Event>> {
        let mut name: Option<String> = None;
        let mut data: Option<String> = None;
        loop {
            self.line.clear();
            let n = self.reader.read_line(&mut self.line)?;
            let line = self.line.trim_end_matches(['\r', '\n']);
            if n == 0 || line.is_empty() {
                if name.is_some() || data.is_some() {
                    return Ok(Some(Event {
                        name: name.unwrap_or_else(|| "message".to_string()),
                        data: data.unwrap_or_default(),
                    }));
                }
                if n == 0 {
                    return Ok(None);
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                None => (line, ""),
            };
            match field {
                "event" => name = Some(value.to_string()),
                "data" => match &mut data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => data = Some(value.to_string()),
                },
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(text: &str) -> Vec<Event> {
        let mut events = Events::new(text.as_bytes());
        std::iter::from_fn(|| events.next_event().unwrap()).collect()
    }

    fn ev(name: &str, data: &str) -> Event {
        Event {
            name: name.into(),
            data: data.into(),
        }
    }

    #[test]
    fn gradio_streams_parse() {
        let stream = "event: heartbeat\ndata: null\n\nevent: generating\r\ndata: [1]\r\n\r\n\
                      : a comment\nevent: complete\ndata: [{\"url\": \"x\"}]\n\n";
        assert_eq!(
            all(stream),
            vec![
                ev("heartbeat", "null"),
                ev("generating", "[1]"),
                ev("complete", "[{\"url\": \"x\"}]")
            ]
        );
    }

    #[test]
    fn data_lines_join_and_unnamed_events_are_messages() {
        assert_eq!(
            all("data: a\ndata:b\n\n\n\ndata\n\n"),
            vec![ev("message", "a\nb"), ev("message", "")]
        );
    }

    #[test]
    fn an_event_cut_off_by_the_end_of_the_stream_is_returned() {
        assert_eq!(
            all("event: error\ndata: {\"error\": null}"),
            vec![ev("error", "{\"error\": null}")]
        );
        assert_eq!(all(""), vec![]);
    }
}
