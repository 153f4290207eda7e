// complexity-router, in C: the same policy as plugins/complexity-router (Rust) and the
// Python and JavaScript examples.
//
// Simple requests (short, no tools, no code, shallow conversation, no media) go to the
// local model; everything else, and everything while the local backend is unhealthy, goes
// to the premium one. Thresholds and targets come from [plugins.config.<file stem>].
//
// Build: cargo xtask plugins (generates classifier.h/.c from ../../wit, compiles this file
// with clang for wasm32-wasi, and makes the module a component; see README.md).
//
// Ownership, as wit-bindgen's C bindings define it: the arguments of an export belong to
// the callee (freed at the end of `classify`), and the strings of the returned decision are
// freed by the generated post-return function, so they are heap copies.

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "classifier.h"

typedef classifier_string_t str_t;

static const char *CODE_MARKERS[] = {"fn ", "def ", "class ", "import ", "#include", "function ",
                                     "=> {", "};", "return ", "SELECT ", "public static",
                                     "console.log"};

static bool contains(const uint8_t *hay, size_t n, const char *needle) {
  size_t m = strlen(needle);
  if (m == 0) return true;
  for (size_t i = 0; i + m <= n; i++) {
    if (hay[i] == (uint8_t)needle[0] && memcmp(hay + i, needle, m) == 0) return true;
  }
  return false;
}

static size_t count(const uint8_t *s, size_t n, uint8_t c) {
  size_t k = 0;
  for (size_t i = 0; i < n; i++) k += s[i] == c;
  return k;
}

static bool looks_like_code(const uint8_t *text, size_t n) {
  if (contains(text, n, "```")) return true;
  int hits = 0;
  for (size_t i = 0; i < sizeof CODE_MARKERS / sizeof CODE_MARKERS[0]; i++) {
    if (contains(text, n, CODE_MARKERS[i]) && ++hits >= 2) return true;
  }
  return hits == 1 && count(text, n, '{') + count(text, n, ';') >= 3;
}

static bool str_eq(const str_t *a, const uint8_t *b, size_t n) {
  return a->len == n && memcmp(a->ptr, b, n) == 0;
}

// Config values are fixed for as long as this plugin version is loaded, so each instance
// reads a key from the host once and keeps it.
#define MAX_KEYS 16
static struct {
  const char *key;
  bool present;
  str_t value;
} config_cache[MAX_KEYS];
static size_t config_used;

// The value of `key`, or NULL when the config does not set it.
static const str_t *config(const char *key) {
  for (size_t i = 0; i < config_used; i++) {
    if (strcmp(config_cache[i].key, key) == 0) {
      return config_cache[i].present ? &config_cache[i].value : NULL;
    }
  }
  str_t k, v = {0};
  classifier_string_set(&k, key);
  bool present = switchyard_plugin_host_config_get(&k, &v);
  if (config_used < MAX_KEYS) {
    config_cache[config_used].key = key;
    config_cache[config_used].present = present;
    config_cache[config_used].value = v;
    config_used++;
    return present ? &config_cache[config_used - 1].value : NULL;
  }
  return NULL;
}

static long config_int(const char *key, long fallback) {
  const str_t *v = config(key);
  if (v == NULL) return fallback;
  size_t i = 0, n = v->len;
  while (i < n && (v->ptr[i] == ' ' || v->ptr[i] == '\t')) i++;
  while (n > i && (v->ptr[n - 1] == ' ' || v->ptr[n - 1] == '\t')) n--;
  if (i == n) return fallback;
  long x = 0;
  bool neg = v->ptr[i] == '-';
  if (neg || v->ptr[i] == '+') i++;
  if (i == n) return fallback;
  for (; i < n; i++) {
    if (v->ptr[i] < '0' || v->ptr[i] > '9') return fallback;
    x = x * 10 + (v->ptr[i] - '0');
  }
  return neg ? -x : x;
}

// Whether `model` is listed in `routes` (a JSON array of strings, or comma-separated);
// true when the list is empty or unset (the policy then acts on every model).
static bool routes_allow(const str_t *model) {
  const str_t *v = config("routes");
  if (v == NULL) return true;
  const uint8_t *s = v->ptr, *end = v->ptr + v->len;
  bool any = false;
  while (s < end && (*s == ' ' || *s == '\t')) s++;
  if (s < end && *s == '[') {
    s++;
    while (s < end) {
      while (s < end && *s != '"' && *s != ']') s++;
      if (s >= end || *s == ']') break;
      const uint8_t *start = ++s;
      while (s < end && *s != '"') s += (*s == '\\') ? 2 : 1;
      if (s > end) break;
      any = true;
      if (str_eq(model, start, (size_t)(s - start))) return true;
      s++;
    }
    return !any;
  }
  while (s < end) {
    const uint8_t *comma = memchr(s, ',', (size_t)(end - s));
    const uint8_t *stop = comma ? comma : end;
    const uint8_t *a = s, *b = stop;
    while (a < b && (*a == ' ' || *a == '\t')) a++;
    while (b > a && (b[-1] == ' ' || b[-1] == '\t')) b--;
    if (b > a) {
      any = true;
      if (str_eq(model, a, (size_t)(b - a))) return true;
    }
    s = comma ? comma + 1 : end;
  }
  return !any;
}

// Why a request is too hard for the local model, or NULL. The reasons are checked in the
// Rust policy's order.
static const char *complexity(const switchyard_plugin_types_request_t *req, long max_tokens,
                              long max_turns) {
  const switchyard_plugin_types_list_message_t *msgs = &req->messages;
  if (req->tools.len > 0) return "uses tools";
  for (size_t i = 0; i < msgs->len; i++) {
    if (msgs->ptr[i].tool_calls.len > 0 || msgs->ptr[i].role == SWITCHYARD_PLUGIN_TYPES_ROLE_TOOL)
      return "uses tools";
  }
  bool code = false, media = false;
  long users = 0;
  size_t chars = 0;
  for (size_t i = 0; i < msgs->len; i++) {
    const switchyard_plugin_types_message_t *m = &msgs->ptr[i];
    if (m->role == SWITCHYARD_PLUGIN_TYPES_ROLE_USER) users++;
    size_t texts = 0, joined_len = 0;
    const str_t *first = NULL;
    for (size_t j = 0; j < m->content.len; j++) {
      const switchyard_plugin_types_content_part_t *p = &m->content.ptr[j];
      switch (p->tag) {
        case SWITCHYARD_PLUGIN_TYPES_CONTENT_PART_TEXT:
          if (texts++ == 0) first = &p->val.text;
          joined_len += p->val.text.len + 1;
          chars += p->val.text.len;
          break;
        case SWITCHYARD_PLUGIN_TYPES_CONTENT_PART_IMAGE_URL:
          chars += 340 * 4;
          media = true;
          break;
        default:
          chars += p->val.other.len;
          media = true;
      }
    }
    if (code || texts == 0) continue;
    if (texts == 1) {
      code = looks_like_code(first->ptr, first->len);
      continue;
    }
    // Several text parts are judged together, one per line.
    uint8_t *joined = malloc(joined_len);
    if (joined == NULL) continue;
    size_t at = 0;
    for (size_t j = 0; j < m->content.len; j++) {
      const switchyard_plugin_types_content_part_t *p = &m->content.ptr[j];
      if (p->tag != SWITCHYARD_PLUGIN_TYPES_CONTENT_PART_TEXT) continue;
      if (at > 0) joined[at++] = '\n';
      memcpy(joined + at, p->val.text.ptr, p->val.text.len);
      at += p->val.text.len;
    }
    code = looks_like_code(joined, at);
    free(joined);
  }
  if (req->prompt.is_some) {
    code = code || looks_like_code(req->prompt.val.ptr, req->prompt.val.len);
    chars += req->prompt.val.len;
  }
  if (code) return "contains code";
  if (users > max_turns) return "deep conversation";
  // Token estimate as the SDK's: 4 bytes a token plus 4 tokens of framing per message.
  if ((long)((chars + 3) / 4 + 4 * msgs->len) > max_tokens) return "long prompt";
  if (media) return "has images or other media";
  return NULL;
}

static void count_up(const char *name) {
  str_t n;
  classifier_string_set(&n, name);
  switchyard_plugin_host_counter_add(&n, 1);
}

// A heap copy of `value` if set, else of `fallback`.
static void dup_or(str_t *out, const str_t *value, const str_t *fallback) {
  const str_t *v = value ? value : fallback;
  classifier_string_dup_n(out, (const char *)v->ptr, v->len);
}

static void decide(switchyard_plugin_types_decision_t *ret, const str_t *backend,
                   const str_t *model, const char *tag, const char *reason) {
  ret->route.is_some = false;
  ret->target.is_some = true;
  classifier_string_dup_n(&ret->target.val.backend, (const char *)backend->ptr, backend->len);
  classifier_string_dup_n(&ret->target.val.model, (const char *)model->ptr, model->len);
  ret->tags.ptr = malloc(sizeof(str_t));
  ret->tags.len = ret->tags.ptr ? 1 : 0;
  if (ret->tags.ptr) classifier_string_dup(&ret->tags.ptr[0], tag);
  ret->reason.is_some = true;
  classifier_string_dup(&ret->reason.val, reason);
}

void exports_switchyard_plugin_classify_classify(
    exports_switchyard_plugin_classify_request_t *req,
    exports_switchyard_plugin_classify_caller_t *who,
    exports_switchyard_plugin_classify_list_backend_status_t *backends,
    exports_switchyard_plugin_classify_decision_t *ret) {
  memset(ret, 0, sizeof *ret);
  if (routes_allow(&req->model)) {
    str_t local_default, premium_default, local, premium, local_model, premium_model;
    classifier_string_set(&local_default, "local");
    classifier_string_set(&premium_default, "openai");
    dup_or(&local, config("local_backend"), &local_default);
    dup_or(&premium, config("premium_backend"), &premium_default);
    dup_or(&local_model, config("local_model"), &req->model);
    dup_or(&premium_model, config("premium_model"), &req->model);
    const char *why = complexity(req, config_int("max_tokens", 400), config_int("max_turns", 4));
    bool local_down = false;
    for (size_t i = 0; i < backends->len; i++) {
      if (backends->ptr[i].health == SWITCHYARD_PLUGIN_TYPES_HEALTH_UNHEALTHY &&
          str_eq(&backends->ptr[i].name, local.ptr, local.len))
        local_down = true;
    }
    if (why != NULL) {
      count_up("complex");
      decide(ret, &premium, &premium_model, "complexity:complex", why);
    } else if (local_down) {
      count_up("local_unhealthy");
      decide(ret, &premium, &premium_model, "complexity:simple",
             "simple, but the local backend is unhealthy");
    } else {
      count_up("simple");
      decide(ret, &local, &local_model, "complexity:simple", "simple");
    }
    classifier_string_free(&local);
    classifier_string_free(&premium);
    classifier_string_free(&local_model);
    classifier_string_free(&premium_model);
  }
  exports_switchyard_plugin_classify_request_free(req);
  exports_switchyard_plugin_classify_caller_free(who);
  exports_switchyard_plugin_classify_list_backend_status_free(backends);
}
