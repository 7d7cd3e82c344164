/*
 * C ABI tests for calling tools: utp_call_tool on C tools (utp_register_tool) and a
 * text tool, argument validation, tool failures, timeouts, bad arguments, the
 * user_data finaliser, 16 threads calling at once, utp_call_tool_async completions, and
 * http tools against a loopback HTTP/1.1 server the test runs itself (sequential calls,
 * which the engine drives on the calling thread, and 8 threads at once), and where C tools and
 * rules run: on the thread blocked in utp_call_tool, or with a timeout on a library thread.
 *
 * Prints "N passed, M failed" last and exits non-zero on any failure.
 */
#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "loopback.h"

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

/* A loopback HTTP/1.1 server with keep-alive: GET /echo?x=V answers {"x":"V"}, anything
 * else 404. One thread per connection; http_server_stop() shuts everything and joins. */
#define MAX_CONNECTIONS 64

struct http_server {
    int listen_fd;
    int port;
    pthread_t acceptor;
    pthread_t threads[MAX_CONNECTIONS];
    int fds[MAX_CONNECTIONS];
    int connections; /* written by the acceptor only, read after it is joined */
};

static void *serve_connection(void *arg) {
    int fd = (int)(intptr_t)arg;
    char buf[4096];
    size_t have = 0;
    for (;;) {
        buf[have] = '\0';
        char *end = strstr(buf, "\r\n\r\n");
        if (end == NULL) {
            if (have + 1 >= sizeof buf) break;
            ssize_t n = recv(fd, buf + have, sizeof buf - 1 - have, 0);
            if (n <= 0) break;
            have += (size_t)n;
            continue;
        }
        char body[160];
        char head[160];
        int found = strncmp(buf, "GET /echo?x=", 12) == 0;
        int body_len = found ? snprintf(body, sizeof body, "{\"x\":\"%.*s\"}", (int)strcspn(buf + 12, " &\r"), buf + 12)
                             : snprintf(body, sizeof body, "no such page");
        int head_len = snprintf(head, sizeof head, "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n",
                                found ? "200 OK" : "404 Not Found", found ? "application/json" : "text/plain", body_len);
        if (!send_all(fd, head, (size_t)head_len) || !send_all(fd, body, (size_t)body_len)) break;
        size_t used = (size_t)(end + 4 - buf);
        memmove(buf, buf + used, have - used);
        have -= used;
    }
    return NULL;
}

static void *accept_connections(void *arg) {
    struct http_server *server = arg;
    for (;;) {
        int fd = accept(server->listen_fd, NULL, NULL);
        if (fd < 0) return NULL; /* the listener was shut down */
        int i = server->connections;
        if (i == MAX_CONNECTIONS || pthread_create(&server->threads[i], NULL, serve_connection, (void *)(intptr_t)fd) != 0) {
            close(fd);
            continue;
        }
        server->fds[i] = fd;
        server->connections = i + 1;
    }
}

static int http_server_start(struct http_server *server) {
    memset(server, 0, sizeof *server);
    server->listen_fd = loopback_socket(SOCK_STREAM, 128, &server->port);
    if (server->listen_fd < 0) return 0;
    if (pthread_create(&server->acceptor, NULL, accept_connections, server) != 0) {
        close(server->listen_fd);
        return 0;
    }
    return 1;
}

static void http_server_stop(struct http_server *server) {
    shutdown(server->listen_fd, SHUT_RDWR);
    pthread_join(server->acceptor, NULL);
    close(server->listen_fd);
    for (int i = 0; i < server->connections; i++) {
        shutdown(server->fds[i], SHUT_RDWR);
        pthread_join(server->threads[i], NULL);
        close(server->fds[i]);
    }
}

/* Calls `net.echo` with x = "<tag><i>" for i in [0, count) and counts the right answers. */
struct echo_calls {
    utp_engine_t *engine;
    char tag;
    int count;
    int right;
};

static void *echo_calls(void *arg) {
    struct echo_calls *c = arg;
    for (int i = 0; i < c->count; i++) {
        char args[64], want[64];
        snprintf(args, sizeof args, "{\"x\": \"%c%d\"}", c->tag, i);
        snprintf(want, sizeof want, "{\"x\":\"%c%d\"}", c->tag, i);
        char *out = NULL;
        utp_error_t *err = utp_call_tool(c->engine, "net.echo", args, NULL, &out);
        if (err == NULL && out != NULL && strcmp(out, want) == 0) c->right++;
        if (err != NULL) utp_error_free(err);
        utp_string_free(out);
    }
    return NULL;
}

static void test_http_calls(utp_engine_t *engine) {
    struct http_server server;
    if (!http_server_start(&server)) {
        CHECK(0, "cannot start the loopback server");
        return;
    }
    char manual[1024];
    snprintf(manual, sizeof manual,
             "{\"tools\":["
             "{\"name\":\"echo\",\"inputs\":{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"string\"}},"
             "\"required\":[\"x\"]},\"tool_call_template\":{\"call_template_type\":\"http\","
             "\"url\":\"http://127.0.0.1:%d/echo\",\"http_method\":\"GET\"}},"
             "{\"name\":\"missing\",\"tool_call_template\":{\"call_template_type\":\"http\","
             "\"url\":\"http://127.0.0.1:%d/missing\",\"http_method\":\"GET\"}}]}",
             server.port, server.port);
    char *names = NULL;
    if (ok(utp_register_manual(engine, manual, "net", &names), "register net")) {
        utp_string_free(names);
        /* One after another: each answered right. */
        struct echo_calls seq = {engine, 's', 100, 0};
        echo_calls(&seq);
        CHECK(seq.right == 100, "%d of 100 sequential http calls answered right", seq.right);
        /* 8 threads at once, each its own arguments. */
        pthread_t threads[8];
        struct echo_calls each[8];
        int started = 0;
        for (int t = 0; t < 8; t++) {
            each[t] = (struct echo_calls){engine, (char)('a' + t), 25, 0};
            if (pthread_create(&threads[t], NULL, echo_calls, &each[t]) == 0) started++;
        }
        CHECK(started == 8, "started %d of 8 threads", started);
        for (int t = 0; t < started; t++) {
            pthread_join(threads[t], NULL);
            CHECK(each[t].right == 25, "thread %d: %d of 25 http calls answered right", t, each[t].right);
        }
        char *out = NULL;
        expect_code(utp_call_tool(engine, "net.missing", NULL, NULL, &out), UTP_ERR_TOOL_FAILED, "http 404");
        expect_code(utp_call_tool(engine, "net.echo", "{}", NULL, &out), UTP_ERR_VALIDATION_FAILED, "http bad args");
        bool removed = false;
        ok(utp_deregister_manual(engine, "net", &removed), "deregister net");
    }
    http_server_stop(&server);
}

/* Where C callbacks ran: the tool's and the rule's thread, and what a nested call returned. */
struct where {
    utp_engine_t *engine;
    pthread_t tool_thread;
    pthread_t rule_thread;
    int rule_calls;
    int nested;
};

static int32_t where_tool(void *user_data, const char *args_json, utp_tool_result_t *result) {
    struct where *w = user_data;
    w->tool_thread = pthread_self();
    if (strstr(args_json, "\"nest\"") != NULL) { /* a call made from inside a tool run here */
        char *out = NULL;
        utp_error_t *err = utp_call_tool(w->engine, "text.hello", NULL, NULL, &out);
        w->nested = err == NULL && out != NULL && strcmp(out, "\"hello\"") == 0;
        utp_error_free(err);
        utp_string_free(out);
    }
    utp_error_free(utp_tool_result_set_json(result, "1"));
    return 0;
}

static void where_rule(void *user_data, const char *tool, const char *action, const char *params_json,
                       utp_rule_result_t *result) {
    struct where *w = user_data;
    (void)tool;
    (void)action;
    w->rule_thread = pthread_self();
    __atomic_add_fetch(&w->rule_calls, 1, __ATOMIC_SEQ_CST);
    if (strstr(params_json, "\"deny\"") != NULL) utp_error_free(utp_rule_result_deny(result, "asked to deny"));
}

static void test_callbacks_on_the_calling_thread(void) {
    utp_engine_t *engine = NULL;
    if (!ok(utp_engine_new(NULL, &engine), "engine for callbacks")) return;
    struct where w = {0};
    w.engine = engine;
    ok(utp_register_tool(engine, "w.tool", NULL, where_tool, &w, NULL, NULL), "register w.tool");
    ok(utp_add_business_rule(engine, "where", where_rule, &w, NULL), "add rule");
    char *out = NULL;
    if (ok(utp_register_manual(engine,
                               "{\"name\": \"text\", \"tools\": [{\"name\": \"hello\", \"tool_call_template\":"
                               " {\"call_template_type\": \"text\", \"content\": \"hello\"}}]}",
                               NULL, &out),
           "register text manual")) {
        utp_string_free(out);
    }
    /* No timeout of its own: the rule and the tool run on this thread. */
    if (ok(utp_call_tool(engine, "w.tool", NULL, NULL, &out), "call here")) {
        CHECK(pthread_equal(w.tool_thread, pthread_self()), "the tool ran on another thread");
        CHECK(pthread_equal(w.rule_thread, pthread_self()), "the rule ran on another thread");
        utp_string_free(out);
    }
    /* The rule decides as before: a denial is PERMISSION_DENIED, with its reason. */
    utp_error_t *err = utp_call_tool(engine, "w.tool", "{\"deny\": true}", NULL, &out);
    expect_code(err, UTP_ERR_PERMISSION_DENIED, "rule run here denies");
    /* A tool run here may call the engine (that call runs on the engine's threads). */
    if (ok(utp_call_tool(engine, "w.tool", "{\"nest\": true}", NULL, &out), "nested call")) {
        CHECK(w.nested, "the nested call failed");
        utp_string_free(out);
    }
    /* With a timeout, both run on a library thread, so that the wait can stop at the deadline. */
    if (ok(utp_call_tool(engine, "w.tool", NULL, "{\"timeout\": 5}", &out), "call with a timeout")) {
        CHECK(!pthread_equal(w.tool_thread, pthread_self()), "the tool ran on the calling thread");
        CHECK(!pthread_equal(w.rule_thread, pthread_self()), "the rule ran on the calling thread");
        utp_string_free(out);
    }
    utp_engine_free(engine);
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
        test_http_calls(engine);
        test_callbacks_on_the_calling_thread();
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
