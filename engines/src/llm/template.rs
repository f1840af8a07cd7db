//! Chat templates: the GGUF's `tokenizer.chat_template` (Jinja), rendered with minijinja the
//! way Hugging Face's `apply_chat_template` renders it (`trim_blocks`, `lstrip_blocks`, loop
//! controls, Python string methods), with `messages`, `add_generation_prompt = true`,
//! `bos_token`, `eos_token` and the request's `chatTemplateKwargs`.
//!
//! A GGUF without a template gets [`GEMMA_TEMPLATE`] when its vocabulary has Gemma's turn
//! tokens (`<start_of_turn>`, `<end_of_turn>`; base Gemma GGUFs ship no template), else
//! [`CHATML_TEMPLATE`].

use minijinja::{Environment, ErrorKind, Value};
use serde_json::Value as Json;
use studio_core::wire::ChatMessage;

/// The fallback template (ChatML: `<|im_start|>role\ncontent<|im_end|>\n` per message, then
/// `<|im_start|>assistant\n`), used when the GGUF carries no `tokenizer.chat_template`.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// The fallback for vocabularies with Gemma's turn tokens: `<start_of_turn>user\n...
/// <end_of_turn>\n` per message (the assistant's role is `model`), then
/// `<start_of_turn>model\n`. Gemma has no system role: system messages are put before the
/// first user message's text, followed by a blank line.
pub const GEMMA_TEMPLATE: &str = "{% set system = namespace(text='') %}{% for message in messages %}{% if message.role == 'system' %}{% set system.text = system.text + message.content + '\n\n' %}{% endif %}{% endfor %}{% set first = namespace(done=false) %}{% for message in messages %}{% if message.role != 'system' %}<start_of_turn>{{ 'model' if message.role == 'assistant' else message.role }}\n{% if not first.done and message.role == 'user' %}{{ system.text }}{% endif %}{% set first.done = true %}{{ message.content | trim }}<end_of_turn>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}";

/// A chat template and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatTemplate {
    source: String,
    fallback: bool,
}

/// What a template is rendered with.
#[derive(Clone, Copy, Debug)]
pub struct TemplateInput<'a> {
    /// The conversation.
    pub messages: &'a [ChatMessage],
    /// The task's `system` (prepended as a `system` message when given).
    pub system: Option<&'a str>,
    /// The model's bos token text.
    pub bos_token: &'a str,
    /// The model's eos token text.
    pub eos_token: &'a str,
    /// Extra variables (`chatTemplateKwargs`, an object); later keys win over defaults.
    pub kwargs: &'a [&'a Json],
}

impl ChatTemplate {
    /// The template `source`, or the ChatML fallback when `None` or blank.
    pub fn new(source: Option<&str>) -> ChatTemplate {
        match source {
            Some(s) if !s.trim().is_empty() => ChatTemplate {
                source: s.to_string(),
                fallback: false,
            },
            _ => ChatTemplate {
                source: CHATML_TEMPLATE.to_string(),
                fallback: true,
            },
        }
    }

    /// The template `source`, or when `None` or blank the fallback for a vocabulary that
    /// has (`gemma_turns`) or lacks Gemma's turn tokens.
    pub fn for_vocabulary(source: Option<&str>, gemma_turns: bool) -> ChatTemplate {
        let t = ChatTemplate::new(source);
        if t.fallback && gemma_turns {
            ChatTemplate {
                source: GEMMA_TEMPLATE.to_string(),
                fallback: true,
            }
        } else {
            t
        }
    }

    /// Whether this is a fallback (the GGUF has no template).
    pub fn is_fallback(&self) -> bool {
        self.fallback
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders the prompt. Errors (a template that does not parse, or that raises) are
    /// reported as text.
    pub fn render(&self, input: &TemplateInput<'_>) -> Result<String, String> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template("chat", &self.source)
            .map_err(|e| format!("the model's chat template does not parse: {e}"))?;
        let tmpl = env.get_template("chat").map_err(|e| e.to_string())?;

        let mut messages: Vec<Json> = Vec::with_capacity(input.messages.len() + 1);
        if let Some(system) = input.system {
            messages.push(serde_json::json!({"role": "system", "content": system}));
        }
        messages.extend(
            input
                .messages
                .iter()
                .map(|m| serde_json::json!({"role": m.role, "content": m.content})),
        );
        let mut ctx = serde_json::Map::new();
        for kw in input.kwargs {
            if let Json::Object(map) = kw {
                for (k, v) in map {
                    ctx.insert(k.clone(), v.clone());
                }
            }
        }
        ctx.insert("messages".into(), Json::Array(messages));
        ctx.insert("add_generation_prompt".into(), Json::Bool(true));
        ctx.insert("bos_token".into(), Json::String(input.bos_token.into()));
        ctx.insert("eos_token".into(), Json::String(input.eos_token.into()));
        tmpl.render(Value::from_serialize(&ctx))
            .map_err(|e| format!("the model's chat template failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    fn input<'a>(messages: &'a [ChatMessage], system: Option<&'a str>) -> TemplateInput<'a> {
        TemplateInput {
            messages,
            system,
            bos_token: "<s>",
            eos_token: "</s>",
            kwargs: &[],
        }
    }

    #[test]
    fn chatml_fallback() {
        let t = ChatTemplate::new(None);
        assert!(t.is_fallback());
        let msgs = [msg("user", "Hi")];
        let out = t.render(&input(&msgs, Some("Be brief."))).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert!(ChatTemplate::new(Some("  ")).is_fallback());
    }

    #[test]
    fn gemma_fallback() {
        let t = ChatTemplate::for_vocabulary(None, true);
        assert!(t.is_fallback());
        let msgs = [
            msg("user", " Hi "),
            msg("assistant", "Hello."),
            msg("user", "More"),
        ];
        assert_eq!(
            t.render(&input(&msgs, Some("Be brief."))).unwrap(),
            "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n<start_of_turn>user\nMore<end_of_turn>\n<start_of_turn>model\n"
        );
        // A template in the file wins; without turn tokens the fallback is ChatML.
        assert_eq!(ChatTemplate::for_vocabulary(Some("x"), true).source(), "x");
        assert_eq!(
            ChatTemplate::for_vocabulary(None, false).source(),
            CHATML_TEMPLATE
        );
    }

    /// SmolLM2-Instruct's template (from its GGUF): a default system prompt unless the first
    /// message is a system message.
    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn smollm2_template() {
        let t = ChatTemplate::new(Some(SMOLLM2));
        assert!(!t.is_fallback());
        let msgs = [msg("user", "What is 2+2?")];
        assert_eq!(
            t.render(&input(&msgs, None)).unwrap(),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
        );
        // With `system`, the task's system message replaces the default one.
        assert_eq!(
            t.render(&input(&msgs, Some("Answer in French."))).unwrap(),
            "<|im_start|>system\nAnswer in French.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn hf_whitespace_control_bos_and_python_methods() {
        // trim_blocks / lstrip_blocks as in transformers, `.strip()` and `bos_token`.
        let src = "{{ bos_token }}\n{% for m in messages %}\n    {% if m.role == 'user' %}\n[INST] {{ m.content.strip() }} [/INST]\n    {% else %}\n{{ m.content }}{{ eos_token }}\n    {% endif %}\n{% endfor %}";
        let t = ChatTemplate::new(Some(src));
        let msgs = [msg("user", "  hi  "), msg("assistant", "hello")];
        assert_eq!(
            t.render(&input(&msgs, None)).unwrap(),
            "<s>\n[INST] hi [/INST]\nhello</s>\n"
        );
    }

    #[test]
    fn kwargs_and_raise_exception() {
        let src = "{% if enable_thinking is defined and not enable_thinking %}no-think {% endif %}{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('tools are not supported') }}{% endif %}{{ m.content }}{% endfor %}";
        let t = ChatTemplate::new(Some(src));
        let kw = serde_json::json!({"enable_thinking": false});
        let msgs = [msg("user", "x")];
        let out = t
            .render(&TemplateInput {
                kwargs: &[&kw],
                ..input(&msgs, None)
            })
            .unwrap();
        assert_eq!(out, "no-think x");
        let msgs = [msg("tool", "x")];
        let err = t.render(&input(&msgs, None)).unwrap_err();
        assert!(err.contains("tools are not supported"), "{err}");
        let err = ChatTemplate::new(Some("{% for %}"))
            .render(&input(&msgs, None))
            .unwrap_err();
        assert!(err.contains("does not parse"), "{err}");
    }
}
