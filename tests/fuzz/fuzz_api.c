/* Fuzz target: the request bodies of `ferry serve` (serve/api.c), without
 * the socket: what http.c hands a POST body to. The input's first byte
 * picks the endpoint (/v1/completions, /v1/chat/completions, /tokenize,
 * /detokenize, /apply-template) and the chat template; the rest is the
 * body, passed with its length and no NUL after it, as the contract says.
 * A request that parses is then answered: a job made from it takes two
 * token events and the end, streamed or whole, as the scheduler sends
 * them. */
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "serve/api.h"

static void answer(const fy_api_req *r, const fy_tokenizer *tok) {
    fy_api_job j;
    fy_strbuf sse = {0};
    fy_err err;
    fy_api_job_init(&j, r, "micro", tok, 1, 1700000000);
    if (r->kind == FY_API_CHAT && r->stream) fy_api_job_start(&j, &sse, &err);
    fy_req_event ev;
    memset(&ev, 0, sizeof ev);
    ev.kind = FY_EV_TOKEN;
    ev.text = "he\xc3", ev.text_len = 3, ev.token = 5, ev.logprob = -0.5f, ev.n_top = 2;
    ev.top_token[0] = 5, ev.top_token[1] = 7, ev.top_logprob[0] = -0.5f, ev.top_logprob[1] = -2.f;
    fy_api_job_event(&j, &ev, &sse, &err);
    ev.text = "\xa9llo", ev.text_len = 4, ev.token = 6;
    fy_api_job_event(&j, &ev, &sse, &err);
    memset(&ev, 0, sizeof ev);
    ev.kind = FY_EV_DONE, ev.finish_reason = "length", ev.prompt_tokens = r->n_tokens, ev.completion_tokens = 2;
    fy_api_job_event(&j, &ev, &sse, &err);
    if (!r->stream) free(fy_api_job_result(&j));
    fy_api_job_free(&j);
    fy_strbuf_free(&sse);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const fy_tokenizer *tok = fz_tokenizer();
    const fy_chat_template *t = fz_template((fy_chat_kind)((data[0] >> 3) % FY_CHAT_N));
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    fy_api_error e;
    switch (data[0] % 5) {
    case 0:
    case 1: {
        fy_api_ctx c = {"micro", tok, t, 128, 32, NULL, 0};
        fy_api_req r;
        memset(&r, 0, sizeof r);
        if (fy_api_parse(data[0] % 5 ? FY_API_CHAT : FY_API_COMPLETION, body, len, &c, &r, &e) == 0) {
            answer(&r, tok);
            fy_api_req_free(&r);
        } else {
            free(fy_api_error_json(&e));
        }
        break;
    }
    case 2: free(fy_api_tokenize(tok, body, len, &e)); break;
    case 3: free(fy_api_detokenize(tok, body, len, &e)); break;
    default: free(fy_api_apply_template(t, body, len, &e)); break;
    }
    return 0;
}
