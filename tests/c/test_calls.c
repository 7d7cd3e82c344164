/*
 * C ABI tests for calling tools: utp_call_tool on C tools (utp_register_tool) and a
 * text tool, argument validation, tool failures, timeouts, bad arguments, the
 * user_data finaliser, 16 threads calling at once, and utp_call_tool_async completions.
 *
 * Prints "N passed, M failed" last and exits non-zero on any failure.
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"

/* user_data of the echo tool: counts calls (atomically) and records its finalisation. */
struct echo_state {
    int calls;
    int freed;
};

/* Echoes its arguments back as the result. */
static int32_t echo_tool(void *user_data, const char *args_json, utp_tool_result_t *result) {
    struct echo_state *state = user_data;
    __atomic_add_fetch(&state->calls, 1, __ATOMIC_SEQ_CST);
    utp_error_t *err = utp_tool_result_set_json(result, args_json);
    if (err != NULL) {
        utp_error_free(err);
        return 1;
    }
    return 0;
}

static void echo_free(void *user_data) {
    struct echo_state *state = user_data;
    state->freed++;
}

static int32_t failing_tool(void *user_data, const char *args_json, utp_tool_result_t *result) {
    (void)user_data;
    (void)args_json;
    utp_error_free(utp_tool_result_set_error(result, "the printer is on fire"));
    return 7;
}

static int32_t bad_json_tool(void *user_data, const char *args_json, utp_tool_result_t *result) {
    (void)user_data;
    (void)args_json;
    utp_error_t *err = utp_tool_result_set_json(result, "{not json");
    int32_t code = err ? utp_error_code(err) : 0;
    utp_error_free(err);
    return code == UTP_ERR_INVALID_ARGUMENT ? 0 : 1; /* the sink refused it; result stays null */
}

static int32_t slow_tool(void *user_data, const char *args_json, utp_tool_result_t *result) {
    (void)user_data;
    (void)args_json;
    (void)result;
    struct timespec pause = {1, 0};
    nanosleep(&pause, NULL);
    return 0;
}

static void test_c_tools(utp_engine_t *engine, struct echo_state *state) {
    char *name = NULL;
    if (ok(utp_register_tool(engine, "c.echo",
                             "{\"description\": \"Echo the arguments\", \"tags\": [\"debug\"],"
                             " \"inputs\": {\"type\": \"object\", \"properties\": {\"x\": {\"type\": \"integer\"}},"
                             " \"required\": [\"x\"]}}",
                             echo_tool, state, echo_free, &name),
           "register c.echo")) {
        CHECK(name != NULL && strcmp(name, "c.echo") == 0, "name %s", name ? name : "(null)");
        utp_string_free(name);
    }
    char *out = NULL;
    if (ok(utp_call_tool(engine, "c.echo", "{\"x\": 42, \"s\": \"\\u00fc\"}", NULL, &out), "call c.echo")) {
        CHECK(find(out, "\"x\":42") >= 0 && find(out, "\"s\":\"\xc3\xbc\"") >= 0, "echo result %s", out);
        utp_string_free(out);
    }
    /* Arguments are validated before the C function runs. */
    int before = __atomic_load_n(&state->calls, __ATOMIC_SEQ_CST);
    out = (char *)"garbage";
    utp_error_t *err = utp_call_tool(engine, "c.echo", "{\"x\": \"forty-two\"}", NULL, &out);
    CHECK(out == NULL, "out not reset");
    CHECK(err != NULL && utp_error_code(err) == UTP_ERR_VALIDATION_FAILED && find(utp_error_message(err), "/x") >= 0,
          "validation: %s", err ? utp_error_message(err) : "success");
    utp_error_free(err);
    CHECK(__atomic_load_n(&state->calls, __ATOMIC_SEQ_CST) == before, "tool ran despite invalid arguments");

    ok(utp_register_tool(engine, "c.fail", NULL, failing_tool, NULL, NULL, NULL), "register c.fail");
    err = utp_call_tool(engine, "c.fail", NULL, NULL, &out);
    CHECK(err != NULL && utp_error_code(err) == UTP_ERR_TOOL_FAILED &&
              find(utp_error_message(err), "c.fail") >= 0 && find(utp_error_message(err), "on fire") >= 0,
          "failure: %s", err ? utp_error_message(err) : "success");
    utp_error_free(err);

    ok(utp_register_tool(engine, "c.badjson", NULL, bad_json_tool, NULL, NULL, NULL), "register c.badjson");
    if (ok(utp_call_tool(engine, "c.badjson", "{}", NULL, &out), "call c.badjson")) {
        CHECK(strcmp(out, "null") == 0, "result %s", out);
        utp_string_free(out);
    }

    ok(utp_register_tool(engine, "c.slow", NULL, slow_tool, NULL, NULL, NULL), "register c.slow");
    expect_code(utp_call_tool(engine, "c.slow", NULL, "{\"timeout\": 0.1}", &out), UTP_ERR_TIMEOUT, "timeout");
}

static void test_text_tool(utp_engine_t *engine) {
    char *names = NULL;
    if (ok(utp_register_manual(engine,
                               "{\"name\": \"docs\", \"tools\": [{\"name\": \"hello\", \"tool_call_template\":"
                               " {\"call_template_type\": \"text\", \"content\": \"hello\"}}]}",
                               NULL, &names),
           "register text manual")) {
        utp_string_free(names);
    }
    char *out = NULL;
    if (ok(utp_call_tool(engine, "docs.hello", NULL, "{\"tenant\": \"t1\", \"session\": \"s1\"}", &out), "call text")) {
        CHECK(strcmp(out, "\"hello\"") == 0, "text result %s", out);
        utp_string_free(out);
    }
}

static int freed_on_error = 0;
static void count_free(void *user_data) {
    (void)user_data;
    freed_on_error++;
}

static void test_bad_arguments(utp_engine_t *engine) {
    char *out = NULL;
    expect_code(utp_call_tool(NULL, "c.echo", NULL, NULL, &out), UTP_ERR_INVALID_ARGUMENT, "NULL engine");
    expect_code(utp_call_tool(engine, NULL, NULL, NULL, &out), UTP_ERR_INVALID_ARGUMENT, "NULL name");
    expect_code(utp_call_tool(engine, "c.echo", "{\"x\": 1}", NULL, NULL), UTP_ERR_INVALID_ARGUMENT, "NULL out");
    expect_code(utp_call_tool(engine, "nope.tool", NULL, NULL, &out), UTP_ERR_NOT_FOUND, "unknown tool");
    expect_code(utp_call_tool(engine, "c.echo", "{\"x\": ", NULL, &out), UTP_ERR_INVALID_ARGUMENT, "bad args JSON");
    expect_code(utp_call_tool(engine, "c.echo", "{\"x\": 1}", "{\"timeout\": -1}", &out), UTP_ERR_INVALID_ARGUMENT,
                "negative timeout");
    expect_code(utp_call_tool(engine, "c.echo", "{\"x\": 1}", "{\"retries\": 3}", &out), UTP_ERR_INVALID_ARGUMENT,
                "unknown option");
    expect_code(utp_call_tool(engine, "c.echo", "{\"x\": 1}", "[]", &out), UTP_ERR_INVALID_ARGUMENT, "options array");
    expect_code(utp_call_tool(engine, "c.\xff", NULL, NULL, &out), UTP_ERR_INVALID_ARGUMENT, "invalid UTF-8 name");

    /* A failed registration still finalises user_data, exactly once. */
    expect_code(utp_register_tool(engine, "nodot", NULL, echo_tool, NULL, count_free, NULL),
                UTP_ERR_INVALID_ARGUMENT, "name without manual");
    expect_code(utp_register_tool(engine, "c.x", "{\"color\": 1}", echo_tool, NULL, count_free, NULL),
                UTP_ERR_INVALID_ARGUMENT, "unknown spec key");
    expect_code(utp_register_tool(engine, "c.x", "{\"inputs\": {\"type\": 12}}", echo_tool, NULL, count_free, NULL),
                UTP_ERR_INVALID_ARGUMENT, "invalid inputs schema");
    expect_code(utp_register_tool(engine, "c.x", NULL, NULL, NULL, count_free, NULL), UTP_ERR_INVALID_ARGUMENT,
                "NULL func");
    expect_code(utp_register_tool(NULL, "c.x", NULL, echo_tool, NULL, count_free, NULL), UTP_ERR_INVALID_ARGUMENT,
                "NULL engine");
    CHECK(freed_on_error == 4, "finaliser ran %d times for 4 failed registrations with a func", freed_on_error);
    expect_code(utp_tool_result_set_json(NULL, "1"), UTP_ERR_INVALID_ARGUMENT, "set_json NULL sink");
    expect_code(utp_tool_result_set_error(NULL, "x"), UTP_ERR_INVALID_ARGUMENT, "set_error NULL sink");
}

enum { THREADS = 16, ROUNDS = 100 };

static void *caller(void *arg) {
    utp_engine_t *engine = arg;
    long bad = 0;
    for (int i = 0; i < ROUNDS; i++) {
        char args[64];
        snprintf(args, sizeof args, "{\"x\": %d}", i);
        char *out = NULL;
        utp_error_t *err = utp_call_tool(engine, "c.echo", args, NULL, &out);
        char want[64];
        snprintf(want, sizeof want, "\"x\":%d", i);
        if (err != NULL || find(out, want) < 0) bad++;
        utp_error_free(err);
        utp_string_free(out);
    }
    return (void *)bad;
}

static void test_threads(utp_engine_t *engine, struct echo_state *state) {
    int before = __atomic_load_n(&state->calls, __ATOMIC_SEQ_CST);
    pthread_t threads[THREADS];
    for (int i = 0; i < THREADS; i++) pthread_create(&threads[i], NULL, caller, engine);
    long bad = 0;
    for (int i = 0; i < THREADS; i++) {
        void *r = NULL;
        pthread_join(threads[i], &r);
        bad += (long)r;
    }
    CHECK(bad == 0, "%ld failed concurrent calls", bad);
    CHECK(__atomic_load_n(&state->calls, __ATOMIC_SEQ_CST) - before == THREADS * ROUNDS, "call count");
}

/* What an async completion saw: set once by the callback, read after waiting. */
struct completion {
    pthread_mutex_t lock;
    pthread_cond_t done_cond;
    int calls;
    int freed;
    int32_t code; /* 0: success */
    char result[256];
    pthread_t thread;
};

static void on_complete(void *user_data, const utp_error_t *error, const char *result_json) {
    struct completion *c = user_data;
    pthread_mutex_lock(&c->lock);
    c->calls++;
    c->code = error ? utp_error_code(error) : 0;
    snprintf(c->result, sizeof c->result, "%s", result_json ? result_json : "");
    c->thread = pthread_self();
    pthread_cond_broadcast(&c->done_cond);
    pthread_mutex_unlock(&c->lock);
}

static void on_complete_free(void *user_data) {
    struct completion *c = user_data;
    pthread_mutex_lock(&c->lock);
    c->freed++;
    pthread_cond_broadcast(&c->done_cond);
    pthread_mutex_unlock(&c->lock);
}

/* Wait until the finaliser ran (it runs after the callback). */
static void wait_freed(struct completion *c) {
    pthread_mutex_lock(&c->lock);
    while (c->freed == 0) pthread_cond_wait(&c->done_cond, &c->lock);
    pthread_mutex_unlock(&c->lock);
}

static void completion_init(struct completion *c) {
    memset(c, 0, sizeof *c);
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->done_cond, NULL);
}

static void completion_destroy(struct completion *c) {
    pthread_mutex_destroy(&c->lock);
    pthread_cond_destroy(&c->done_cond);
}

static void test_async_calls(utp_engine_t *engine) {
    struct completion c;
    completion_init(&c);
    ok(utp_call_tool_async(engine, "c.echo", "{\"x\": 5}", NULL, on_complete, &c, on_complete_free), "async echo");
    wait_freed(&c);
    CHECK(c.calls == 1 && c.freed == 1, "callback %d times, finaliser %d times", c.calls, c.freed);
    CHECK(c.code == 0 && strstr(c.result, "\"x\":5") != NULL, "async result %d %s", (int)c.code, c.result);
    CHECK(!pthread_equal(c.thread, pthread_self()), "the callback ran on the calling thread");
    completion_destroy(&c);

    /* A failing call delivers its error; a timeout delivers TIMEOUT. */
    completion_init(&c);
    ok(utp_call_tool_async(engine, "c.fail", NULL, NULL, on_complete, &c, on_complete_free), "async fail");
    wait_freed(&c);
    CHECK(c.calls == 1 && c.code == UTP_ERR_TOOL_FAILED && c.result[0] == 0, "async failure %d", (int)c.code);
    completion_destroy(&c);
    completion_init(&c);
    ok(utp_call_tool_async(engine, "c.slow", NULL, "{\"timeout\": 0.05}", on_complete, &c, on_complete_free),
       "async slow");
    wait_freed(&c);
    CHECK(c.calls == 1 && c.code == UTP_ERR_TIMEOUT, "async timeout %d", (int)c.code);
    completion_destroy(&c);

    /* Refused at once: no callback, the finaliser runs before the call returns. */
    completion_init(&c);
    expect_code(utp_call_tool_async(engine, NULL, NULL, NULL, on_complete, &c, on_complete_free),
                UTP_ERR_INVALID_ARGUMENT, "async NULL name");
    expect_code(utp_call_tool_async(engine, "c.echo", "{oops", NULL, on_complete, &c, on_complete_free),
                UTP_ERR_INVALID_ARGUMENT, "async bad JSON");
    expect_code(utp_call_tool_async(engine, "c.echo", NULL, NULL, NULL, &c, on_complete_free),
                UTP_ERR_INVALID_ARGUMENT, "async NULL callback");
    expect_code(utp_call_tool_async(NULL, "c.echo", NULL, NULL, on_complete, &c, on_complete_free),
                UTP_ERR_INVALID_ARGUMENT, "async NULL engine");
    CHECK(c.calls == 0 && c.freed == 4, "refused calls: callback %d, finaliser %d", c.calls, c.freed);
    completion_destroy(&c);
    /* An unknown tool is an error delivered to the callback (the call was accepted). */
    completion_init(&c);
    ok(utp_call_tool_async(engine, "c.nope", NULL, NULL, on_complete, &c, on_complete_free), "async unknown");
    wait_freed(&c);
    CHECK(c.calls == 1 && c.code == UTP_ERR_NOT_FOUND, "async unknown tool %d", (int)c.code);
    completion_destroy(&c);
}

int main(void) {
    struct echo_state state = {0, 0};
    utp_engine_t *engine = NULL;
    if (ok(utp_engine_new(NULL, &engine), "engine_new")) {
        test_c_tools(engine, &state);
        test_text_tool(engine);
        test_bad_arguments(engine);
        test_threads(engine, &state);
        test_async_calls(engine);
        /* Deregistering the manual drops the tool and finalises its user_data. */
        bool removed = false;
        ok(utp_deregister_manual(engine, "c", &removed), "deregister c");
        CHECK(removed, "manual c not removed");
        CHECK(state.freed == 1, "user_data finalised %d times after deregistration", state.freed);
        char *out = NULL;
        expect_code(utp_call_tool(engine, "c.echo", "{\"x\": 1}", NULL, &out), UTP_ERR_NOT_FOUND,
                    "call after deregistration");
        utp_engine_free(engine);
    }
    CHECK(state.freed == 1, "user_data finalised %d times in all", state.freed);
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
