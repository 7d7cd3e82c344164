/*
 * `websocket` tools through the C ABI: a manual of websocket tools given to
 * utp_register_manual() as JSON text, a call whose frame comes back echoed, arguments
 * that fail validation (UTP_ERR_VALIDATION_FAILED, no frame sent), a stream of
 * python-utcp `tool_response` frames read with utp_stream_next() until `stream_end`, and
 * a refused address (UTP_ERR_SECURITY). The server is a child process: the tokio-tungstenite
 * server of core/examples/ws_test_server.rs, whose path mk/c.mk passes in
 * UTP_WS_TEST_SERVER; it prints its URL and exits when its stdin closes.
 * Prints "N passed, M failed" last and exits non-zero on any failure.
 */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

struct child {
    pid_t pid;
    int stdin_fd; /* closing it stops the server */
    char url[128];
};

/* Start the server and read the URL it prints. 0 on failure. */
static int server_start(const char *path, struct child *c) {
    int in[2], out[2];
    if (pipe(in) != 0) return 0;
    if (pipe(out) != 0) {
        close(in[0]);
        close(in[1]);
        return 0;
    }
    c->pid = fork();
    if (c->pid == 0) {
        dup2(in[0], STDIN_FILENO);
        dup2(out[1], STDOUT_FILENO);
        close(in[0]);
        close(in[1]);
        close(out[0]);
        close(out[1]);
        execl(path, path, (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    c->stdin_fd = in[1];
    size_t have = 0;
    while (c->pid > 0 && have + 1 < sizeof c->url) {
        ssize_t n = read(out[0], c->url + have, 1);
        if (n <= 0 || c->url[have] == '\n') break;
        have++;
    }
    c->url[have] = '\0';
    close(out[0]);
    return c->pid > 0 && strncmp(c->url, "ws://127.0.0.1:", 15) == 0;
}

static void server_stop(struct child *c) {
    if (c->pid <= 0) return;
    close(c->stdin_fd);
    int status = 0;
    waitpid(c->pid, &status, 0);
}

/* utp_stream_next succeeds with exactly `want` (NULL: the end of the stream). */
static void expect_item(utp_stream_t *stream, const char *want, const char *what) {
    char *item = NULL;
    if (!ok(utp_stream_next(stream, 10000, &item), what)) return;
    if (want == NULL) {
        CHECK(item == NULL, "%s: expected the end, got %s", what, item);
    } else {
        CHECK(item != NULL && strcmp(item, want) == 0, "%s: expected %s, got %s", what, want, item ? item : "the end");
    }
    utp_string_free(item);
}

int main(void) {
    const char *path = getenv("UTP_WS_TEST_SERVER");
    if (path == NULL || path[0] == '\0') {
        fprintf(stderr, "UTP_WS_TEST_SERVER is not set: run this test through `make test-c`\n");
        return 1;
    }
    struct child server;
    memset(&server, 0, sizeof server);
    if (!server_start(path, &server)) {
        fprintf(stderr, "FAIL cannot start %s (read '%s')\n", path, server.url);
        server_stop(&server);
        return 1;
    }
    char manual[2048];
    snprintf(manual, sizeof manual,
             "{\"name\": \"ws\", \"tools\": ["
             "{\"name\": \"echo\", \"inputs\": {\"type\": \"object\", \"properties\": {\"text\": {\"type\": \"string\"}},"
             " \"required\": [\"text\"]},"
             " \"tool_call_template\": {\"call_template_type\": \"websocket\", \"url\": \"%s/echo\","
             " \"response_format\": \"json\"}},"
             "{\"name\": \"command\", \"inputs\": {\"type\": \"object\"},"
             " \"tool_call_template\": {\"call_template_type\": \"websocket\", \"url\": \"%s/echo\","
             " \"message\": \"CMD:UTCP_ARG_cmd_UTCP_ARG\", \"response_format\": \"json\"}},"
             "{\"name\": \"feed\", \"inputs\": {\"type\": \"object\"},"
             " \"tool_call_template\": {\"call_template_type\": \"websocket\", \"url\": \"%s/stream\"}},"
             "{\"name\": \"private\", \"inputs\": {\"type\": \"object\"},"
             " \"tool_call_template\": {\"call_template_type\": \"websocket\", \"url\": \"wss://10.0.0.1/x\"}}]}",
             server.url, server.url, server.url);
    utp_engine_t *engine = NULL;
    if (!ok(utp_engine_new("{}", &engine), "engine_new")) {
        server_stop(&server);
        return 1;
    }
    char *out = NULL;
    if (ok(utp_register_manual(engine, manual, NULL, &out), "register the websocket manual")) {
        CHECK(find(out, "\"ws.echo\"") >= 0 && find(out, "\"ws.feed\"") >= 0, "names %s", out);
        utp_string_free(out);
    }

    out = NULL;
    if (ok(utp_call_tool(engine, "ws.echo", "{\"text\": \"hello\"}", NULL, &out), "call echo")) {
        CHECK(strcmp(out, "{\"echo\":{\"text\":\"hello\"}}") == 0, "echo result %s", out);
        utp_string_free(out);
    }
    out = NULL;
    if (ok(utp_call_tool(engine, "ws.command", "{\"cmd\": \"status\"}", NULL, &out), "call with a message template")) {
        CHECK(strcmp(out, "{\"echo\":\"CMD:status\"}") == 0, "command result %s", out);
        utp_string_free(out);
    }

    /* Bad arguments: caught before any frame is sent. */
    out = NULL;
    expect_code(utp_call_tool(engine, "ws.echo", "{\"text\": 5}", NULL, &out), UTP_ERR_VALIDATION_FAILED,
                "an argument of the wrong type");
    expect_code(utp_call_tool(engine, "ws.echo", "{}", NULL, &out), UTP_ERR_VALIDATION_FAILED,
                "a required argument missing");
    expect_code(utp_call_tool(engine, "ws.command", "{}", NULL, &out), UTP_ERR_VALIDATION_FAILED,
                "an argument the message template needs");
    expect_code(utp_call_tool(engine, "ws.echo", "[1, 2]", NULL, &out), UTP_ERR_VALIDATION_FAILED,
                "arguments that are not an object");
    CHECK(out == NULL, "no result written on error");
    expect_code(utp_call_tool(engine, "ws.private", "{}", NULL, &out), UTP_ERR_SECURITY, "a private address");

    /* A stream: python-utcp's tool_response frames, one item each, until stream_end. */
    utp_stream_t *stream = NULL;
    if (ok(utp_call_tool_stream(engine, "ws.feed", "{}", "{\"timeout\": 10}", &stream), "open the stream")) {
        expect_item(stream, "1", "item 1");
        expect_item(stream, "2", "item 2");
        expect_item(stream, "3", "item 3");
        expect_item(stream, NULL, "stream_end ends it");
        utp_stream_free(stream);
    }
    /* A plain call of the same tool returns the first frame that comes back. */
    out = NULL;
    if (ok(utp_call_tool(engine, "ws.feed", "{}", NULL, &out), "call the streaming tool")) {
        CHECK(strcmp(out, "\"{\\\"type\\\":\\\"tool_response\\\",\\\"result\\\":1}\"") == 0, "first frame %s", out);
        utp_string_free(out);
    }

    utp_engine_free(engine);
    server_stop(&server);
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
