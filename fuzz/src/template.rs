//! `chat_template`: the fuzzer's bytes as a chat template from a model file and a
//! conversation, rendered the way the LLM engine renders every prompt
//! ([`ChatTemplate::render`]).
//!
//! Input: the template source up to the first NUL byte, then messages separated by `0x01`
//! (each `role 0x02 content`).
//!
//! Checks:
//! * no panic, no endless loop (the fuel), no endless output (the cap): a rendered prompt
//!   is at most `MAX_RENDERED_PROMPT_BYTES`;
//! * the fallback (ChatML, for a model without a template) always renders, and its prompt
//!   holds every message's role and content ([`check_fallback`]).
//!
//! Seeds (`corpus/chat_template/`): the templates of common model families (ChatML,
//! SmolLM2, Llama 3, Mistral, Gemma) with short conversations, and loops that would run
//! forever or print gigabytes without the limits.

use studio_core::wire::ChatMessage;
use studio_engines::llm::template::{ChatTemplate, TemplateInput, MAX_RENDERED_PROMPT_BYTES};

/// Messages taken from one input, at most.
pub const MAX_MESSAGES: usize = 32;

/// Splits `data` into a template source and messages.
pub fn parse(data: &[u8]) -> (String, Vec<ChatMessage>) {
    let text = String::from_utf8_lossy(data);
    let (source, rest) = text.split_once('\0').unwrap_or((&text, ""));
    let messages = rest
        .split('\u{1}')
        .filter(|m| !m.is_empty())
        .take(MAX_MESSAGES)
        .map(|m| {
            let (role, content) = m.split_once('\u{2}').unwrap_or(("user", m));
            ChatMessage {
                role: role.to_string(),
                content: content.to_string(),
            }
        })
        .collect();
    (source.to_string(), messages)
}

fn input<'a>(
    messages: &'a [ChatMessage],
    kwargs: &'a [&'a serde_json::Value],
) -> TemplateInput<'a> {
    TemplateInput {
        messages,
        system: None,
        bos_token: "<s>",
        eos_token: "</s>",
        kwargs,
    }
}

/// Runs every check on `data`.
pub fn check(data: &[u8]) -> Result<(), String> {
    let (source, messages) = parse(data);
    let kwargs = serde_json::json!({"enable_thinking": false, "tools": []});
    let kw = [&kwargs];
    if let Ok(prompt) = ChatTemplate::new(Some(&source)).render(&input(&messages, &kw)) {
        if prompt.len() > MAX_RENDERED_PROMPT_BYTES {
            return Err(format!("a prompt of {} bytes was rendered", prompt.len()));
        }
    }
    let fallback = ChatTemplate::new(None).render(&input(&messages, &[]));
    check_fallback(&messages, fallback)
}

/// The fallback renders, and holds every message.
pub fn check_fallback(
    messages: &[ChatMessage],
    rendered: Result<String, String>,
) -> Result<(), String> {
    let prompt = rendered.map_err(|e| format!("the ChatML fallback failed: {e}"))?;
    for m in messages {
        if !prompt.contains(&m.role) || !prompt.contains(&m.content) {
            return Err(format!("the fallback prompt lost the message {m:?}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_is_split_into_a_template_and_messages() {
        let (source, messages) = parse(b"{{ x }}\0user\x02hi\x01assistant\x02yo");
        assert_eq!(source, "{{ x }}");
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[1].content, "yo");
    }

    #[test]
    fn the_fallback_check_can_fail() {
        let messages = [ChatMessage {
            role: "user".into(),
            content: "hello".into(),
        }];
        assert!(check_fallback(&messages, Ok("<|im_start|>user\nhello".into())).is_ok());
        assert!(check_fallback(&messages, Ok("<|im_start|>user\n".into())).is_err());
        assert!(check_fallback(&messages, Err("boom".into())).is_err());
    }
}
