/* Chat templates: turning a list of {role, content} messages into the one
 * prompt string a model was trained on (docs/SERVING.md "Chat templates").
 *
 * ferry has no Jinja engine. It knows a few templates by heart, renders them
 * in C, and recognises their Jinja text (a model's tokenizer_config.json
 * chat_template, or a file given with --chat-template) by comparing it, with
 * all whitespace removed, to the real template strings kept here:
 *   deepseek3  DeepSeek-V3's (huggingface.co/deepseek-ai/DeepSeek-V3,
 *              tokenizer_config.json): bos + system prompts joined by "\n\n",
 *              then "<｜User｜>u" and "<｜Assistant｜>a<｜end▁of▁sentence｜>",
 *              and "<｜Assistant｜>" to ask for the reply;
 *   chatml     "<|im_start|>role\ncontent<|im_end|>\n" per message, then
 *              "<|im_start|>assistant\n";
 *   ferry      what ferry's Hugging Face export writes (interop/hf_meta.c):
 *              "role: content" + eos per message, then "assistant: ".
 * Only plain conversations are rendered (roles system, user, assistant; text
 * content): tool calls and tool results are refused.
 *
 * Independent of HTTP: fine-tuning on chat data (io/sft.h) renders with the
 * same code, and fy_chat_render_spans says which bytes are the replies. */
#ifndef FY_CHAT_H
#define FY_CHAT_H

#include <stddef.h>

#include "core/err.h"
#include "core/strbuf.h"
#include "io/tokenizer.h"

typedef enum { FY_CHAT_DEEPSEEK3 = 0, FY_CHAT_CHATML = 1, FY_CHAT_FERRY = 2, FY_CHAT_N = 3 } fy_chat_kind;

typedef struct fy_chat_msg {
    const char *role;     /* "system" ("developer" is taken as system), "user", "assistant" */
    const char *content;  /* NUL-terminated UTF-8 */
} fy_chat_msg;

/* A template chosen for a model, with the special-token strings it uses. */
typedef struct fy_chat_template {
    fy_chat_kind kind;
    char bos[64];        /* bos_token ("" when the tokenizer has none) */
    char eos[64];        /* eos_token ("" when none) */
    char source[160];    /* how it was chosen, for the log ("--chat-template chatml", ...) */
} fy_chat_template;

/* "deepseek3", "chatml", "ferry". */
const char *fy_chat_name(fy_chat_kind k);
/* The real Jinja text of the template (NUL-terminated). */
const char *fy_chat_jinja(fy_chat_kind k);
/* The kind named `name`; -1 when it names none. */
int fy_chat_from_name(const char *name, fy_chat_kind *out);
/* The known template whose Jinja text equals `jinja` once all whitespace is
 * removed from both; -1 when none does. */
int fy_chat_match_jinja(const char *jinja, fy_chat_kind *out);

/* Chooses the template for a model: `spec` (--chat-template: a name, or a
 * file holding a known template's Jinja text) when given; else the
 * chat_template of `tokenizer_config` (a path, may be NULL or missing) when
 * it is a known one; else deepseek3 for a tokenizer with DeepSeek's chat
 * tokens and ferry's own otherwise (a warning says so when the model's own
 * template was not recognised). bos/eos come from the tokenizer. */
int fy_chat_select(const char *spec, const char *tokenizer_config, const fy_tokenizer *tok, fy_chat_template *out,
                   fy_err *err);

/* Appends the prompt for messages[0..n) to out; add_generation_prompt asks
 * for the assistant's reply (as transformers' apply_chat_template). Fails on
 * an unknown role or no message. */
int fy_chat_render(const fy_chat_template *t, const fy_chat_msg *msgs, int n, int add_generation_prompt,
                   fy_strbuf *out, fy_err *err);

/* Where one assistant reply lies in a rendering: bytes [begin, end). */
typedef struct fy_chat_span {
    size_t begin, end;
} fy_chat_span;

/* The finished conversation messages[0..n) (no generation prompt, so the
 * text that fy_chat_render with add_generation_prompt gives for the
 * messages before an assistant reply is a prefix of it, for every template
 * here when no system message follows a reply), appended to out, and for
 * each message i spans[i] (offsets in out): for an assistant message its
 * content and the end-of-turn token that closes it (deepseek3
 * <｜end▁of▁sentence｜>, chatml <|im_end|>, ferry the eos token), what a
 * model generates after the prompt; {0, 0} for the other roles. */
int fy_chat_render_spans(const fy_chat_template *t, const fy_chat_msg *msgs, int n, fy_strbuf *out,
                         fy_chat_span *spans, fy_err *err);

#endif
