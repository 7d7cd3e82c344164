/*
 * The shared host-option cases (tests/scenarios/host_options.json) through the C ABI:
 * the same bad option gets the same code and message from C, Python and Node
 * (utp_core::host checks them all). Each case's `input` is passed as it is written in
 * the file, as options_json / filter_json (for `subscribe`, its `pattern`).
 *
 * The file is found through $UTP_HOST_OPTIONS_JSON (set by mk/c.mk), or the first
 * argument when it ends in ".json". Prints "N passed, M failed" last and exits non-zero
 * on any failure.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

/* ---- a small reader for the scenario file: spans of JSON values, decoded strings ---- */

static const char *skip_ws(const char *p) {
    while (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t') p++;
    return p;
}

/* The end of the string starting at `p` (on its opening quote), or NULL. */
static const char *skip_string(const char *p) {
    for (p++; *p != '\0'; p++) {
        if (*p == '\\') {
            if (*++p == '\0') return NULL;
        } else if (*p == '"') {
            return p + 1;
        }
    }
    return NULL;
}

/* The end of the JSON value starting at `p`, or NULL. */
static const char *skip_value(const char *p) {
    p = skip_ws(p);
    if (*p == '"') return skip_string(p);
    if (*p == '{' || *p == '[') {
        int depth = 0;
        while (*p != '\0') {
            if (*p == '"') {
                p = skip_string(p);
                if (p == NULL) return NULL;
                continue;
            }
            if (*p == '{' || *p == '[') depth++;
            if (*p == '}' || *p == ']') {
                if (--depth == 0) return p + 1;
            }
            p++;
        }
        return NULL;
    }
    while (*p != '\0' && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\n') p++;
    return p;
}

/* The value of member `key` of the object at `obj` (its start), or NULL. */
static const char *member(const char *obj, const char *key) {
    const char *p = skip_ws(obj);
    if (*p != '{') return NULL;
    p = skip_ws(p + 1);
    size_t key_len = strlen(key);
    while (*p == '"') {
        const char *end = skip_string(p);
        if (end == NULL) return NULL;
        bool match = (size_t)(end - p - 2) == key_len && strncmp(p + 1, key, key_len) == 0;
        p = skip_ws(end);
        if (*p != ':') return NULL;
        p = skip_ws(p + 1);
        if (match) return p;
        p = skip_value(p);
        if (p == NULL) return NULL;
        p = skip_ws(p);
        if (*p == ',') p = skip_ws(p + 1);
    }
    return NULL;
}

/* Append code point `c` as UTF-8. */
static char *put_utf8(char *out, unsigned c) {
    if (c < 0x80) {
        *out++ = (char)c;
    } else if (c < 0x800) {
        *out++ = (char)(0xC0 | (c >> 6));
        *out++ = (char)(0x80 | (c & 0x3F));
    } else {
        *out++ = (char)(0xE0 | (c >> 12));
        *out++ = (char)(0x80 | ((c >> 6) & 0x3F));
        *out++ = (char)(0x80 | (c & 0x3F));
    }
    return out;
}

/* The string at `p` decoded (malloc'd; the scenario file holds no surrogate pairs), or NULL. */
static char *decode_string(const char *p) {
    if (p == NULL || *p != '"') return NULL;
    const char *end = skip_string(p);
    if (end == NULL) return NULL;
    char *out = malloc((size_t)(end - p) * 3 + 1);
    char *o = out;
    for (p++; p < end - 1; p++) {
        if (*p != '\\') {
            *o++ = *p;
            continue;
        }
        switch (*++p) {
            case 'n': *o++ = '\n'; break;
            case 't': *o++ = '\t'; break;
            case 'r': *o++ = '\r'; break;
            case 'b': *o++ = '\b'; break;
            case 'f': *o++ = '\f'; break;
            case 'u': {
                char hex[5] = {p[1], p[2], p[3], p[4], '\0'};
                o = put_utf8(o, (unsigned)strtoul(hex, NULL, 16));
                p += 4;
                break;
            }
            default: *o++ = *p; break; /* " \ / */
        }
    }
    *o = '\0';
    return out;
}

/* The value at `p` as its own NUL-terminated text (malloc'd). */
static char *raw_value(const char *p) {
    const char *end = skip_value(p);
    if (end == NULL) return NULL;
    p = skip_ws(p);
    size_t n = (size_t)(end - p);
    char *out = malloc(n + 1);
    memcpy(out, p, n);
    out[n] = '\0';
    return out;
}

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) return NULL;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)size + 1);
    size_t got = fread(text, 1, (size_t)size, f);
    text[got] = '\0';
    fclose(f);
    return text;
}

/* ---- the engine side ---- */

static int32_t echo_tool(void *user_data, const char *args_json, utp_tool_result_t *result) {
    (void)user_data;
    utp_error_t *err = utp_tool_result_set_json(result, args_json);
    if (err != NULL) {
        utp_error_free(err);
        return 1;
    }
    return 0;
}

static void on_event(void *user_data, const char *event_json) {
    (void)user_data;
    (void)event_json;
}

static const char *WORKFLOW =
    "{\"name\": \"host_options\", \"steps\": [{\"id\": \"a\", \"tool\": \"host.echo\", \"args\": {\"v\": 1}}]}";

/* Run one case's input through the function its kind belongs to. */
static utp_error_t *run_case(utp_engine_t *engine, const char *kind, const char *input_at, const char *input) {
    char *out = NULL;
    utp_error_t *err = NULL;
    if (strcmp(kind, "call_options") == 0) {
        err = utp_call_tool(engine, "host.echo", "{\"v\": 1}", input, &out);
    } else if (strcmp(kind, "run_options") == 0) {
        err = utp_run_workflow(engine, WORKFLOW, NULL, input, &out);
    } else if (strcmp(kind, "plan_options") == 0) {
        err = utp_plan(engine, "echo the value", input, &out);
    } else if (strcmp(kind, "event_filter") == 0) {
        err = utp_stored_events(engine, input, &out);
    } else if (strcmp(kind, "history_filter") == 0) {
        err = utp_history(engine, input, &out);
    } else if (strcmp(kind, "subscribe") == 0) {
        char *pattern = decode_string(member(input_at, "pattern"));
        uint64_t id = 0;
        err = utp_subscribe(engine, pattern, on_event, NULL, NULL, &id);
        if (err == NULL) {
            bool removed = false;
            err = utp_unsubscribe(engine, id, &removed);
        }
        free(pattern);
    } else {
        fprintf(stderr, "unknown kind %s\n", kind);
        failed++;
    }
    utp_string_free(out);
    return err;
}

int main(int argc, char **argv) {
    const char *path = getenv("UTP_HOST_OPTIONS_JSON");
    if (argc > 1 && strlen(argv[1]) > 5 && strcmp(argv[1] + strlen(argv[1]) - 5, ".json") == 0) path = argv[1];
    if (path == NULL) {
        fprintf(stderr, "set UTP_HOST_OPTIONS_JSON to tests/scenarios/host_options.json\n");
        return 2;
    }
    char *text = read_file(path);
    if (text == NULL) {
        fprintf(stderr, "cannot read %s\n", path);
        return 2;
    }

    utp_engine_t *engine = NULL;
    if (!ok(utp_engine_new(NULL, &engine), "engine_new")) return 1;
    ok(utp_register_tool(engine, "host.echo", NULL, echo_tool, NULL, NULL, NULL), "register host.echo");

    const char *p = member(text, "cases");
    CHECK(p != NULL && *p == '[', "no cases array in %s", path);
    int ran = 0;
    if (p != NULL && *p == '[') p = skip_ws(p + 1);
    while (p != NULL && *p == '{') {
        const char *skip = member(p, "skip");
        if (skip == NULL || member(skip, "c") == NULL) {
            char *name = decode_string(member(p, "name"));
            char *kind = decode_string(member(p, "kind"));
            const char *input_at = member(p, "input");
            char *input = raw_value(input_at);
            const char *code_at = member(p, "code");
            char *code = (code_at != NULL && *code_at == '"') ? decode_string(code_at) : NULL;
            char *message = decode_string(member(p, "message"));
            utp_error_t *err = run_case(engine, kind, input_at, input);
            if (code == NULL) {
                ok(err, name);
            } else {
                CHECK(strcmp(code, "INVALID_ARGUMENT") == 0, "%s: the table's code %s", name, code);
                if (err != NULL) {
                    CHECK(find(utp_error_message(err), message) >= 0, "%s: expected '%s', got '%s'", name, message,
                          utp_error_message(err));
                }
                expect_code(err, UTP_ERR_INVALID_ARGUMENT, name); /* frees err */
            }
            ran++;
            free(name);
            free(kind);
            free(input);
            free(code);
            free(message);
        }
        p = skip_value(p);
        if (p != NULL) p = skip_ws(p);
        if (p != NULL && *p == ',') p = skip_ws(p + 1);
    }
    CHECK(ran >= 20, "only %d cases ran", ran);

    utp_engine_free(engine);
    free(text);
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
